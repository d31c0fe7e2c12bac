"""Image-text contrastive losses: SigLIP's pairwise sigmoid loss and CLIP's symmetric InfoNCE.

Sigmoid: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP), the contrastive half of
Kimi-VL's CoCa stage. Softmax: Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision" (CLIP). Both work on one process's batch: the negatives are the other pairs of the
local batch. The learnable logit scale and bias belong to the model (``CoCaHeads``) and come in as inputs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError

ContrastiveKind = Literal["sigmoid", "softmax"]


def sigmoid_contrastive_loss(logits: Tensor) -> Tensor:
    """SigLIP: ``-sum log sigmoid(z_ij * logit_ij) / B`` with ``z = +1`` on matching pairs, ``-1`` elsewhere."""
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1  # [B, B]
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def softmax_contrastive_loss(logits: Tensor) -> Tensor:
    """CLIP: mean of the image->text and text->image cross-entropies, matching pairs on the diagonal."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ContrastiveLoss(nn.Module):
    """Contrastive loss over a batch of paired image and text embeddings.

    Args:
        kind: ``sigmoid`` (SigLIP, uses the bias) or ``softmax`` (CLIP InfoNCE, a bias would cancel out).
    """

    def __init__(self, kind: ContrastiveKind = "sigmoid") -> None:
        super().__init__()
        if kind not in ("sigmoid", "softmax"):
            raise ConfigError(f"Unknown contrastive loss {kind!r}; choose 'sigmoid' or 'softmax'.")
        self.kind = kind

    def forward(
        self, image_embed: Tensor, text_embed: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss of ``B`` pairs where image ``i`` matches text ``i``.

        Args:
            image_embed: ``[B, E]`` image embeddings (L2-normalised).
            text_embed: ``[B, E]`` text embeddings (L2-normalised).
            logit_scale: scalar multiplying the cosine similarities (already exponentiated).
            logit_bias: scalar added to the logits (sigmoid only; None = 0).

        Returns:
            ``{"contrastive": loss, "loss": loss}``.
        """
        logits = logit_scale * image_embed.float() @ text_embed.float().T  # [B_image, B_text]
        if self.kind == "sigmoid":
            loss = sigmoid_contrastive_loss(logits if logit_bias is None else logits + logit_bias)
        else:
            loss = softmax_contrastive_loss(logits)
        return {"contrastive": loss, "loss": loss}
