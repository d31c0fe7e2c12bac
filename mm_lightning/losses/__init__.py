"""One loss per objective; each returns a dict of named terms with the total under ``"loss"``."""

from mm_lightning.losses.next_token import NextTokenLoss

__all__ = ["NextTokenLoss"]
