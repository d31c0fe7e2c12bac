"""Image-text contrastive losses: SigLIP's pairwise sigmoid loss and CLIP's symmetric InfoNCE.

Sigmoid: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP), the contrastive half of
Kimi-VL's CoCa stage. Softmax: Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision" (CLIP). The learnable logit scale and bias belong to the model (``CoCaHeads``) and come in
as inputs.

Global negatives (open_clip's ``gather_with_grad`` + ``local_loss``): under data parallelism every rank gathers
the other ranks' embeddings, with gradients flowing back to the rank that made them, and scores its own ``b``
rows against all ``N b`` columns, normalised by its own ``b``. The mean of the ranks' losses is then the
single-process loss of the concatenated batch, and so is its gradient: the gather's backward sums every rank's
gradient into the owner's rows, and DDP/FSDP's gradient averaging divides that sum by ``N``, exactly what the
single-process mean over ``N b`` rows does. No extra factor is needed (it needs as many rows on every rank, as the
datamodules' full batches give).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError

ContrastiveKind = Literal["sigmoid", "softmax"]
# torch 2.14 renamed these two collectives (the old names warn there); older torch has only the old ones
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def sigmoid_contrastive_loss(logits: Tensor, first_positive: int = 0) -> Tensor:
    """SigLIP: ``-sum log sigmoid(z_ij * logit_ij) / b`` with ``z = +1`` on matching pairs, ``-1`` elsewhere.

    Args:
        logits: ``[b, B]`` the local images against all texts (``B = b`` on one process).
        first_positive: the column of the text matching the first image (this rank's offset in the gathered batch).
    """
    targets = torch.arange(logits.shape[0], device=logits.device) + first_positive
    signs = 2 * F.one_hot(targets, logits.shape[1]).to(logits.dtype) - 1  # [b, B]
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def softmax_contrastive_loss(logits_per_image: Tensor, logits_per_text: Tensor, first_positive: int = 0) -> Tensor:
    """CLIP: mean of the image->text and text->image cross-entropies.

    Args:
        logits_per_image: ``[b, B]`` the local images against all texts.
        logits_per_text: ``[b, B]`` the local texts against all images.
        first_positive: the column matching the first local row (this rank's offset in the gathered batch).
    """
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device) + first_positive
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def gather_with_grad(features: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's ``features`` concatenated in rank order; the backward sums all ranks' gradients into the owner's.

    Args:
        features: ``[b, E]`` this rank's rows (``b`` the same on every rank).
        group: the data-parallel process group (None: the default group).

    Returns:
        ``[N b, E]``.
    """
    return _GatherRows.apply(features, group)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 forward, reduce-scatter (sum) backward."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        gathered = features.new_empty((data_parallel_size(group) * features.shape[0], *features.shape[1:]))
        _all_gather(gathered, features.contiguous(), group=group)
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        local = grad.new_empty((grad.shape[0] // data_parallel_size(ctx.group), *grad.shape[1:]))
        _reduce_scatter(local, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return local, None


def data_parallel_size(group: dist.ProcessGroup | None = None) -> int:
    """Ranks in ``group`` (1 without an initialised process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class ContrastiveLoss(nn.Module):
    """Contrastive loss over a batch of paired image and text embeddings.

    Args:
        kind: ``sigmoid`` (SigLIP, uses the bias) or ``softmax`` (CLIP InfoNCE, a bias would cancel out).
        global_negatives: in training under data parallelism, score the local pairs against every rank's
            embeddings (module docstring); in eval mode, or on one process, each rank's batch alone.
    """

    def __init__(self, kind: ContrastiveKind = "sigmoid", global_negatives: bool = True) -> None:
        super().__init__()
        if kind not in ("sigmoid", "softmax"):
            raise ConfigError(f"Unknown contrastive loss {kind!r}; choose 'sigmoid' or 'softmax'.")
        self.kind = kind
        self.global_negatives = global_negatives
        self.group: dist.ProcessGroup | None = None  # the data-parallel group (set by the stage); None: the default

    def forward(
        self, image_embed: Tensor, text_embed: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss of the ``b`` local pairs where image ``i`` matches text ``i``.

        Args:
            image_embed: ``[b, E]`` image embeddings (L2-normalised).
            text_embed: ``[b, E]`` text embeddings (L2-normalised).
            logit_scale: scalar multiplying the cosine similarities (already exponentiated); 0-d or ``[1]`` (as
                ``CoCaHeads`` returns it), which broadcast alike.
            logit_bias: scalar added to the logits (sigmoid only; None = 0); 0-d or ``[1]``.

        Returns:
            ``{"contrastive": loss, "loss": loss}``; with global negatives, this rank's share (their mean over the
            ranks is the loss of the whole batch).
        """
        image, text = image_embed.float(), text_embed.float()
        first_positive = 0
        all_image, all_text = image, text
        if self.global_negatives and self.training and data_parallel_size(self.group) > 1:
            first_positive = dist.get_rank(self.group) * image.shape[0]
            all_text = gather_with_grad(text, self.group)  # [N b, E]
            if self.kind == "softmax":
                all_image = gather_with_grad(image, self.group)  # [N b, E]
        logits = logit_scale * image @ all_text.T  # [b, N b]
        if self.kind == "sigmoid":
            loss = sigmoid_contrastive_loss(logits if logit_bias is None else logits + logit_bias, first_positive)
        else:
            loss = softmax_contrastive_loss(logits, logit_scale * text @ all_image.T, first_positive)
        return {"contrastive": loss, "loss": loss}
