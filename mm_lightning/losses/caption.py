"""Captioning loss: next-token cross-entropy over a caption given its image (the generative half of CoCa,
Yu et al. 2022)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.losses.next_token import IGNORE_INDEX


class CaptionLoss(nn.Module):
    """Mean cross-entropy of each caption's next tokens, padding ignored.

    Args:
        pad_id: the padding token id (the project tokenizer's ``<|pad|>`` is 1); used when no mask is given.
    """

    def __init__(self, pad_id: int = 1) -> None:
        super().__init__()
        self.pad_id = pad_id

    def forward(
        self, caption_logits: Tensor, caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Logits at position ``t`` are scored against token ``t + 1``; padded targets are skipped.

        Args:
            caption_logits: ``[B, L, V]`` logits from the caption decoder.
            caption_ids: ``[B, L]`` caption tokens (the EOD that ends a caption is a target too).
            caption_mask: ``[B, L]`` 1/True on real tokens; default ``caption_ids != pad_id``.

        Returns:
            ``{"caption": loss, "loss": loss}``.
        """
        is_real = caption_ids != self.pad_id if caption_mask is None else caption_mask.bool()
        targets = caption_ids[:, 1:].masked_fill(~is_real[:, 1:], IGNORE_INDEX)  # [B, L-1]
        logits = caption_logits[:, :-1].flatten(0, 1).float()  # [B*(L-1), V]
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=IGNORE_INDEX)
        return {"caption": loss, "loss": loss}
