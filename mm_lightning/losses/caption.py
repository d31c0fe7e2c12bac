"""Captioning loss: next-token cross-entropy over a caption given its image (the generative half of CoCa,
Yu et al. 2022).

From logits (:meth:`CaptionLoss.forward`), or from the caption decoder's normalised states and its output layer's
weight (:meth:`CaptionLoss.from_hidden`), ``chunk_size`` tokens at a time
(:func:`~mm_lightning.ops.linear_cross_entropy.linear_cross_entropy`), so the ``[B, L, V]`` logits never exist whole.
Both score the same positions and agree in value and gradients.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, IGNORE_INDEX
from mm_lightning.ops.linear_cross_entropy import linear_cross_entropy


class CaptionLoss(nn.Module):
    """Mean cross-entropy of each caption's next tokens, padding ignored.

    Args:
        pad_id: the padding token id (the project tokenizer's ``<|pad|>`` is 1); used when no mask is given.
        chunk_size: tokens per chunk in :meth:`from_hidden`; ``0`` or ``None`` computes the logits whole.
    """

    def __init__(self, pad_id: int = 1, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 0:
            raise ConfigError(f"caption chunk_size must be 0 (or null: no chunks) or positive, got {chunk_size}")
        self.pad_id = pad_id
        self.chunk_size = chunk_size or 0

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
        targets = self.targets(caption_ids, caption_mask)  # [B, L-1]
        logits = caption_logits[:, :-1].flatten(0, 1).float()  # [B*(L-1), V]
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=IGNORE_INDEX)
        return {"caption": loss, "loss": loss}

    def from_hidden(
        self, states: Tensor, head_weight: Tensor, caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The same terms from the decoder's normalised states ``[B, L, d]`` and the head weight ``[V, d]``.

        With a ``chunk_size`` the logits of at most that many counted positions exist at a time; positions with a
        padded target never reach the head.
        """
        if not self.chunk_size:
            return self(F.linear(states, head_weight), caption_ids, caption_mask)
        targets = self.targets(caption_ids, caption_mask)  # [B, L-1]
        loss = linear_cross_entropy(states[:, :-1], head_weight, targets, self.chunk_size, IGNORE_INDEX)
        return {"caption": loss, "loss": loss}

    def targets(self, caption_ids: Tensor, caption_mask: Tensor | None = None) -> Tensor:
        """Targets ``[B, L-1]`` of positions ``0 .. L-2``: the next token, ``IGNORE_INDEX`` where it is padding."""
        is_real = caption_ids != self.pad_id if caption_mask is None else caption_mask.bool()  # [B, L]
        return caption_ids[:, 1:].masked_fill(~is_real[:, 1:], IGNORE_INDEX)
