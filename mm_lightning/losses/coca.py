"""The CoCa loss (Yu et al. 2022) as Kimi-VL trains its ViT: SigLIP contrastive + 2 x captioning."""

from __future__ import annotations

from torch import Tensor, nn

from mm_lightning.losses.caption import CaptionLoss
from mm_lightning.losses.contrastive import ContrastiveKind, ContrastiveLoss


class CoCaLoss(nn.Module):
    """``contrastive + caption_weight * caption`` over the outputs of ``CoCaHeads``.

    Args:
        contrastive: ``sigmoid`` (SigLIP, Kimi-VL's choice) or ``softmax`` (CLIP, the CoCa paper's).
        caption_weight: weight of the captioning term (Kimi-VL: 2).
        pad_id: padding token id, used when no caption mask is given.
        global_negatives: in training under data parallelism, every rank's embeddings are the contrastive
            negatives (``ContrastiveLoss``).
    """

    def __init__(
        self,
        contrastive: ContrastiveKind = "sigmoid",
        caption_weight: float = 2.0,
        pad_id: int = 1,
        global_negatives: bool = True,
    ) -> None:
        super().__init__()
        self.contrastive = ContrastiveLoss(contrastive, global_negatives)
        self.caption = CaptionLoss(pad_id)
        self.caption_weight = caption_weight

    def forward(
        self, outputs: dict[str, Tensor], caption_ids: Tensor, caption_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Score one batch.

        Args:
            outputs: ``CoCaHeads``' output dict (``image_embed``, ``text_embed``, ``caption_logits``,
                ``logit_scale``, ``logit_bias``).
            caption_ids: ``[B, L]`` caption tokens.
            caption_mask: ``[B, L]`` 1/True on real tokens; default ``caption_ids != pad_id``.

        Returns:
            ``{"contrastive": ..., "caption": ..., "loss": contrastive + caption_weight * caption}`` (unweighted terms).
        """
        contrastive = self.contrastive(
            outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], outputs.get("logit_bias")
        )["loss"]
        caption = self.caption(outputs["caption_logits"], caption_ids, caption_mask)["loss"]
        return {"contrastive": contrastive, "caption": caption, "loss": contrastive + self.caption_weight * caption}
