"""Next-token (causal language modelling) cross-entropy over packed rows.

From logits (:meth:`NextTokenLoss.forward`, for whoever needs them anyway: perplexity records, generation), or from
the LLM's final hidden states and its head weight (:meth:`NextTokenLoss.from_hidden`), ``chunk_size`` tokens at a
time (:func:`~mm_lightning.ops.linear_cross_entropy.linear_cross_entropy`) so a long row's logits never exist whole.
The stages train with the second, through ``LLM.forward(..., head_loss=...)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.ops.linear_cross_entropy import linear_cross_entropy

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024
"""Tokens per chunk of the output layer's loss by default: at the 1b preset's 128K vocabulary one chunk's fp32
logits are 0.5 GB, whatever the row's length."""


class NextTokenLoss(nn.Module):
    """Mean cross-entropy of next-token logits against ``labels``; positions labelled ``-100`` are ignored.

    Args:
        chunk_size: tokens per chunk in :meth:`from_hidden`; ``0`` or ``None`` computes the logits whole.
    """

    def __init__(self, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 0:
            raise ConfigError(f"loss_chunk_size must be 0 (or null: no chunks) or positive, got {chunk_size}")
        self.chunk_size = chunk_size or 0

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``logits`` ``[B, T, V]``, ``labels`` ``[B, T]`` -> ``{"next_token": ce, "loss": ce}``."""
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return {"next_token": ce, "loss": ce}

    def from_hidden(self, hidden: Tensor, head_weight: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The same terms from the final hidden states ``[B, T, d]`` and the output layer's weight ``[V, d]``.

        With a ``chunk_size`` the logits exist one chunk of tokens at a time, in the forward and the backward pass;
        the loss and gradients equal the whole logits' (up to float rounding).
        """
        if not self.chunk_size:
            return self(F.linear(hidden, head_weight), labels)
        ce = linear_cross_entropy(hidden, head_weight, labels, self.chunk_size, IGNORE_INDEX)
        return {"next_token": ce, "loss": ce}
