"""One loss per objective; each returns a dict of named terms with the total under ``"loss"``."""

from mm_lightning.losses.caption import CaptionLoss
from mm_lightning.losses.coca import CoCaLoss
from mm_lightning.losses.contrastive import ContrastiveLoss
from mm_lightning.losses.next_token import NextTokenLoss

__all__ = ["CaptionLoss", "CoCaLoss", "ContrastiveLoss", "NextTokenLoss"]
