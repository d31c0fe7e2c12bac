"""Model FLOPs of one training step, for the throughput monitor's FLOP/s and MFU (PaLM, appendix B).

A weight costs 2 FLOPs per token in the forward pass, 2 more for the gradient to its layer's input and 2 for its
own gradient; attention scores cost what ``LLM.flops_per_token`` and ``ViT.flops_per_patch`` count forward, in the
same proportions backward. So a module costs, in forward passes' worth (:func:`step_passes`): 3 when it trains, 2
when it is frozen but a module before it trains (gradients flow through it: the alignment stage's LLM; a
LoRA-adapted one nearly), 1 when nothing in or before it trains (a frozen ViT). A VLM step is its LLM tokens (image
placeholders and markers included) plus its ViT patches, each image attending over its own, plus the projector's
merged tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mm_lightning.models.llm import LLM
from mm_lightning.models.projector import Projector
from mm_lightning.models.vit import ViT


def trains(module: nn.Module) -> bool:
    """Whether any of ``module``'s parameters gets a gradient."""
    return any(parameter.requires_grad for parameter in module.parameters())


def step_passes(module: nn.Module, gradients_through: bool = False) -> float:
    """Forward passes' worth of FLOPs ``module`` costs in a training step.

    One forward; one more for the gradients to its inputs when it or a module before it trains
    (``gradients_through``); and the share of its weights that train, for their own gradients.
    """
    sizes = [(parameter.numel(), parameter.requires_grad) for parameter in module.parameters()]
    share = sum(size for size, trained in sizes if trained) / max(sum(size for size, _ in sizes), 1)
    return 1.0 + float(share > 0 or gradients_through) + share


def dense_flops_per_token(module: nn.Module, passes: float = 3.0) -> float:
    """FLOPs per token of ``module``'s linear layers, ``2 x weights x passes`` (its attention scores left out)."""
    weights = sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, nn.Linear))
    return 2.0 * weights * passes


def vit_flops(vit: ViT, grid_hw: Tensor | Sequence[Sequence[int]], passes: float = 3.0) -> float:
    """FLOPs of the ViT over packed images with patch grids ``grid_hw`` ``[n, 2]``, each attending over its own."""
    counts = [int(h) * int(w) for h, w in (grid_hw.tolist() if isinstance(grid_hw, Tensor) else grid_hw)]
    return sum(n * vit.flops_per_patch(n, training=False) * passes for n in counts)


def vlm_step_flops(llm: LLM, vit: ViT, projector: Projector, llm_tokens: int, seq_len: int,
                   grid_hw: Tensor | None) -> float:  # fmt: skip
    """FLOPs of one VLM training step, each backbone counted by what of it trains (:func:`step_passes`).

    Args:
        llm: the LLM.
        vit: the ViT.
        projector: the projector.
        llm_tokens: tokens through the LLM (text, image placeholders and markers).
        seq_len: the length the LLM's attention runs over (a packed row's length, or one sequence's).
        grid_hw: ``[n, 2]`` patch grids of the step's images; ``None`` (or empty) for a batch without images.
    """
    has_images = grid_hw is not None and grid_hw.numel() > 0
    vision_trains = has_images and (trains(vit) or trains(projector))
    flops = llm_tokens * llm.flops_per_token(seq_len, training=False) * step_passes(llm, vision_trains)
    if has_images:
        merged = sum(projector.num_tokens(h, w) for h, w in grid_hw.tolist())
        flops += vit_flops(vit, grid_hw, step_passes(vit))
        flops += merged * dense_flops_per_token(projector, step_passes(projector, trains(vit)))
    return float(flops)
