"""The CoCa loss (Yu et al. 2022) as Kimi-VL trains its ViT: SigLIP contrastive + 2 x captioning.

The caption term comes from ``CoCaHeads``' logits, or, when the heads were called with
``caption_loss=loss.caption_head_loss(...)``, from the chunked loss they computed on the decoder's states (the
stage trains so: the ``[B, L, V]`` logits never exist whole).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from mm_lightning.losses.caption import CaptionLoss
from mm_lightning.losses.contrastive import ContrastiveKind, ContrastiveLoss
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE
from mm_lightning.models.llm import HeadLoss


class CoCaLoss(nn.Module):
    """``contrastive + caption_weight * caption`` over the outputs of ``CoCaHeads``.

    Args:
        contrastive: ``sigmoid`` (SigLIP, Kimi-VL's choice) or ``softmax`` (CLIP, the CoCa paper's).
        caption_weight: weight of the captioning term (Kimi-VL: 2).
        pad_id: padding token id, used when no caption mask is given.
        global_negatives: in training under data parallelism, every rank's embeddings are the contrastive
            negatives (``ContrastiveLoss``).
        caption_chunk_size: tokens per chunk of the caption loss from the decoder's states (``CaptionLoss``).
    """

    def __init__(
        self,
        contrastive: ContrastiveKind = "sigmoid",
        caption_weight: float = 2.0,
        pad_id: int = 1,
        global_negatives: bool = True,
        caption_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.contrastive = ContrastiveLoss(contrastive, global_negatives)
        self.caption = CaptionLoss(pad_id, caption_chunk_size)
        self.caption_weight = caption_weight

    def caption_head_loss(self, caption_ids: Tensor, caption_mask: Tensor | None = None) -> HeadLoss:
        """The caption loss of these captions as ``CoCaHeads.forward``'s ``caption_loss``: a function of the decoder's
        states and the head weight (``CaptionLoss.from_hidden``)."""
        return partial(self.caption.from_hidden, caption_ids=caption_ids, caption_mask=caption_mask)

    def forward(
        self, outputs: dict[str, Any], caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Score one batch.

        Args:
            outputs: ``CoCaHeads``' output dict (``image_embed``, ``text_embed``, ``logit_scale``, ``logit_bias``,
                and ``caption_logits`` or the terms of :meth:`caption_head_loss` as ``caption_loss``).
            caption_ids: ``[B, L]`` caption tokens.
            caption_mask: ``[B, L]`` 1/True on real tokens; default ``caption_ids != pad_id``.

        Returns:
            ``{"contrastive": ..., "caption": ..., "loss": contrastive + caption_weight * caption}`` (unweighted terms).
        """
        contrastive = self.contrastive(
            outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], outputs.get("logit_bias")
        )["loss"]
        if "caption_loss" in outputs:
            caption = outputs["caption_loss"]["loss"]
        else:
            caption = self.caption(outputs["caption_logits"], caption_ids, caption_mask)["loss"]
        return {"contrastive": contrastive, "caption": caption, "loss": contrastive + self.caption_weight * caption}
