"""The vision-to-language projector: Kimi-VL's pixel shuffle plus two-layer MLP (Kimi Team 2025).

Each image's ViT patch grid ``[h, w, d]`` is layer-normed per patch, then pixel-shuffled: every
``factor x factor`` block of neighbouring patches becomes one token of ``d * factor**2`` features, which
cuts the image's token count by ``factor**2`` (4 with Kimi-VL's 2x2). A ``Linear -> GELU -> Linear`` MLP
maps the merged features to the LLM's width. Kimi-VL's MoonViT merges the same way; unlike it, odd grids
are padded with zeros at the bottom/right rather than cropped, so no patch is ever dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.models.registry import register_backbone, register_preset


@dataclass
class ProjectorConfig:
    """Architecture of the vision-to-language projector."""

    vision_dim: int = 384
    """Width of the ViT's patch features (the ViT's ``d_model``)."""
    llm_dim: int = 768
    """Width of the LLM's embeddings (the LLM's ``d_model``)."""
    shuffle_factor: int = 2
    """Side of the block of neighbouring patches merged into one token (2: 2x2 patches -> 1 token)."""
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorm on the patch features."""
    merged_dim: int = field(init=False)
    """Width of a merged token, derived: ``vision_dim * shuffle_factor**2`` (also the MLP's hidden width)."""

    def __post_init__(self) -> None:
        if self.shuffle_factor < 1:
            raise ConfigError(f"shuffle_factor={self.shuffle_factor} must be at least 1")
        self.merged_dim = self.vision_dim * self.shuffle_factor**2


def pixel_shuffle(grid: Tensor, factor: int) -> Tensor:
    """Merge every ``factor x factor`` block of neighbouring patches into one feature vector.

    Sides that ``factor`` does not divide are padded with zero patches at the bottom/right first. Within a
    block the sub-patches are concatenated row-major: sub-patch ``(i, j)`` (row ``i``, column ``j`` of the
    block) fills features ``[(i * factor + j) * d, (i * factor + j + 1) * d)`` of the merged vector.

    Args:
        grid: ``[h, w, d]`` patch features of one image.
        factor: Side of the merged block.

    Returns:
        ``[ceil(h / factor), ceil(w / factor), d * factor**2]`` merged features.
    """
    h, w, d = grid.shape
    pad_h, pad_w = -h % factor, -w % factor
    if pad_h or pad_w:
        grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))  # [h + pad_h, w + pad_w, d]
    out_h, out_w = (h + pad_h) // factor, (w + pad_w) // factor
    blocks = grid.reshape(out_h, factor, out_w, factor, d).permute(0, 2, 1, 3, 4)  # [h', w', f, f, d]
    return blocks.reshape(out_h, out_w, factor * factor * d)


@register_backbone("projector", ProjectorConfig)
class Projector(nn.Module):
    """LayerNorm -> pixel shuffle -> ``Linear(4d, 4d)`` -> GELU -> ``Linear(4d, llm_dim)``, per image.

    The LayerNorm normalises each patch's ``d`` features (i.e. each sub-patch separately, before
    concatenation), as Kimi-VL's ``pre_norm`` does. It runs before the shuffle, so padded sub-slots stay
    exactly zero rather than taking the norm's bias.
    """

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.vision_dim, eps=config.norm_eps)
        self.fc1 = nn.Linear(config.merged_dim, config.merged_dim)
        self.fc2 = nn.Linear(config.merged_dim, config.llm_dim)

    def merged_grid(self, h: int, w: int) -> tuple[int, int]:
        """The merged token grid ``(h', w')`` of an ``h x w`` patch grid."""
        factor = self.config.shuffle_factor
        return math.ceil(h / factor), math.ceil(w / factor)

    def num_tokens(self, h: int, w: int) -> int:
        """How many LLM tokens an ``h x w`` patch grid becomes (the image's placeholder count)."""
        out_h, out_w = self.merged_grid(h, w)
        return out_h * out_w

    def forward(self, grids: list[Tensor]) -> list[Tensor]:
        """Project each image's patch grid to LLM embeddings.

        Args:
            grids: Per-image ``[h_i, w_i, vision_dim]`` patch features (``models.vit.split_grids``).

        Returns:
            Per-image ``[num_tokens(h_i, w_i), llm_dim]`` embeddings, merged tokens in row-major order.
        """
        for grid in grids:
            if grid.dim() != 3 or grid.shape[-1] != self.config.vision_dim:
                raise ValueError(f"expected a [h, w, {self.config.vision_dim}] grid, got {tuple(grid.shape)}")
        factor = self.config.shuffle_factor
        merged = [pixel_shuffle(self.norm(grid), factor).flatten(0, 1) for grid in grids]  # n x [n_i, 4d]
        tokens = torch.cat(merged)  # [sum n_i, 4d]: one MLP call for all images
        out = self.fc2(F.gelu(self.fc1(tokens)))  # [sum n_i, llm_dim]
        return list(out.split([m.shape[0] for m in merged]))


@register_preset("projector", "tiny")
def _tiny() -> ProjectorConfig:
    return ProjectorConfig(vision_dim=128, llm_dim=256)  # vit/tiny -> llm/tiny


@register_preset("projector", "small")
def _small() -> ProjectorConfig:
    return ProjectorConfig(vision_dim=384, llm_dim=768)  # vit/small -> llm/small


@register_preset("projector", "so400m")
def _so400m() -> ProjectorConfig:
    return ProjectorConfig(vision_dim=1152, llm_dim=2048)  # vit/so400m -> llm/1b
