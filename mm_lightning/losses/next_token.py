"""Next-token (causal language modelling) cross-entropy over packed rows."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


class NextTokenLoss(nn.Module):
    """Mean cross-entropy of ``logits`` against ``labels``; positions labelled ``-100`` are ignored."""

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``logits`` ``[B, T, V]``, ``labels`` ``[B, T]`` -> ``{"next_token": ce, "loss": ce}``."""
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return {"next_token": ce, "loss": ce}
