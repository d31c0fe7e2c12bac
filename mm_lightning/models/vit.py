"""A native-resolution vision transformer: MoonViT (Kimi-VL) on SigLIP shapes, packed NaViT style.

Images of any size and aspect ratio arrive as one packed sequence of patches (``ops/patches.py``:
NaViT, Dehghani et al. 2023). Pre-norm blocks with LayerNorm and a GELU MLP follow SigLIP (Zhai et al.
2023; the ``so400m`` preset has SigLIP-SO400M's shapes). Positions follow MoonViT: SigLIP's learned
absolute table, bicubically interpolated to each image's (possibly non-square) patch grid, plus 2-D
rotary positions in every attention layer (``rope_2d``; switched off, the blocks are SigLIP's, so a tower
converted from SigLIP by ``mm_lightning.interop`` gives its original features). Attention is non-causal and
block-diagonal over ``seq_ids``, so images packed together never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.models.registry import register_backbone, register_preset
from mm_lightning.ops.attention import attention
from mm_lightning.ops.rope import apply_rope, rope_2d_cos_sin


@dataclass
class ViTConfig:
    """Architecture of the vision encoder."""

    patch_size: int = 14
    """Patch side in pixels; a patch is ``3 * patch_size**2`` input values."""
    d_model: int = 384
    """Width of the residual stream."""
    n_layers: int = 12
    """Number of transformer blocks."""
    n_heads: int = 6
    """Number of attention heads."""
    mlp_hidden: int = 1536
    """Hidden width of the GELU MLP."""
    max_patches: int = 1024
    """Cap on patches per image; larger images are scaled down to fit (aspect ratio kept)."""
    pos_grid: int = 16
    """Side of the learned absolute position-embedding table, interpolated to each image's grid."""
    rope_base: float = 10_000.0
    """Base (theta) of the 2-D rotary positions."""
    rope_2d: bool = True
    """Rotate queries and keys by the patch's (row, column) (MoonViT); off, positions come from the table alone
    (SigLIP), so a converted SigLIP tower gives its original features."""
    gelu_approximate: str = "tanh"
    """GELU of the MLP: ``tanh`` (SigLIP's approximation) or ``none`` (the exact GELU of some timm SigLIP towers)."""
    norm_eps: float = 1e-6
    """Epsilon of the LayerNorms."""
    attn_backend: str = "auto"
    """Attention backend: ``auto`` (xformers on CUDA when available, else SDPA), ``sdpa`` or ``xformers``."""
    init_std: float = 0.02
    """Standard deviation of the (truncated) normal weight init."""
    head_dim: int = field(init=False)
    """Per-head width, derived: ``d_model // n_heads``."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        self.head_dim = self.d_model // self.n_heads
        if self.rope_2d and self.head_dim % 4:
            raise ConfigError(f"head_dim={self.head_dim} must be divisible by 4 for 2-D RoPE")
        if self.gelu_approximate not in ("tanh", "none"):
            raise ConfigError(f"gelu_approximate={self.gelu_approximate!r}; choose 'tanh' or 'none'")


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with 2-D RoPE, through the shared attention backends."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, seq_ids: Tensor) -> Tensor:
        cfg = self.config
        batch, seq_len, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq_len, 3, cfg.n_heads, cfg.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, N, Dh]
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v, causal=False, seq_ids=seq_ids, backend=cfg.attn_backend)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class MLP(nn.Module):
    """SigLIP's feed-forward: ``fc2(gelu(fc1(x)))``, the GELU tanh-approximated unless ``approximate="none"``."""

    def __init__(self, d_model: int, hidden: int, approximate: str = "tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.mlp_hidden, config.gelu_approximate)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, seq_ids: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, seq_ids)
        return x + self.mlp(self.mlp_norm(x))


@register_backbone("vit", ViTConfig)
class ViT(nn.Module):
    """Vision encoder over packed native-resolution patches; returns final-normed patch features."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(3 * config.patch_size**2, config.d_model)
        self.pos_embed = nn.Parameter(torch.empty(config.pos_grid, config.pos_grid, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal weights and position table, zero biases, unit LayerNorm gains."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """The learned position table resized (bicubic) to a ``grid_h x grid_w`` grid: ``[grid_h, grid_w, d]``."""
        table = self.pos_embed  # [G, G, d]
        if (grid_h, grid_w) == tuple(table.shape[:2]):
            return table
        resized = F.interpolate(
            table.permute(2, 0, 1)[None].float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False
        )  # [1, d, h, w]
        return resized[0].permute(1, 2, 0).to(table.dtype)

    def position_embeddings(self, grid_hw: Tensor) -> Tensor:
        """Absolute position embeddings of every packed patch: ``[N, d]`` for ``grid_hw`` ``[n, 2]``."""
        cache: dict[tuple[int, int], Tensor] = {}
        pieces = []
        for grid in map(tuple, grid_hw.tolist()):
            if grid not in cache:
                cache[grid] = self.interpolate_pos_embed(*grid).flatten(0, 1)  # [h * w, d]
            pieces.append(cache[grid])
        return torch.cat(pieces)

    def forward(self, patches: Tensor, grid_hw: Tensor, seq_ids: Tensor | None = None) -> Tensor:
        """Encode packed images.

        Args:
            patches: ``[1, N, 3 * patch_size**2]`` packed patches (``ops.patches.pack_patches``).
            grid_hw: ``[n_images, 2]`` each image's patch grid, in packing order.
            seq_ids: ``[1, N]`` image index of every patch; None derives it from ``grid_hw``.

        Returns:
            ``[1, N, d_model]`` final-normed patch features.
        """
        counts = grid_hw.prod(dim=1)  # [n]
        if patches.shape[0] != 1 or patches.shape[1] != int(counts.sum()):
            raise ValueError(f"patches {tuple(patches.shape)} do not match grids totalling {int(counts.sum())}")
        if seq_ids is None:
            seq_ids = torch.repeat_interleave(torch.arange(len(counts), device=patches.device), counts)[None]
        x = self.patch_embed(patches) + self.position_embeddings(grid_hw).to(patches.dtype)  # [1, N, d]
        cos = sin = None
        if self.config.rope_2d:
            cos, sin = rope_2d_cos_sin(grid_hw, self.config.head_dim, self.config.rope_base, x.dtype)  # [1, 1, N, Dh]
        for block in self.blocks:
            x = block(x, cos, sin, seq_ids)
        return self.norm(x)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` leaves the position table out."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.pos_embed.numel() if non_embedding else total

    def flops_per_patch(self, patches_per_image: int, training: bool = True) -> float:
        """Model FLOPs per patch (PaLM appendix B): ``2N + 4 L n d`` forward, attention over an ``n``-patch image."""
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul_params + 4 * cfg.n_layers * patches_per_image * cfg.d_model
        return 3 * forward if training else forward


def split_grids(features: Tensor, grid_hw: Tensor) -> list[Tensor]:
    """Split packed features ``[1, N, d]`` into per-image grids ``[h_i, w_i, d]`` (for the 2x2 pixel shuffle)."""
    counts = grid_hw.prod(dim=1).tolist()
    pieces = features[0].split(counts)  # n x [h_i * w_i, d]
    return [piece.reshape(h, w, -1) for piece, (h, w) in zip(pieces, grid_hw.tolist())]


@register_preset("vit", "tiny")
def _tiny() -> ViTConfig:
    return ViTConfig(patch_size=14, d_model=128, n_layers=4, n_heads=4, mlp_hidden=512, max_patches=256, pos_grid=16)


@register_preset("vit", "small")
def _small() -> ViTConfig:
    return ViTConfig(patch_size=14, d_model=384, n_layers=12, n_heads=6, mlp_hidden=1536, max_patches=1024, pos_grid=16)


@register_preset("vit", "so400m")
def _so400m() -> ViTConfig:
    return ViTConfig(
        patch_size=14, d_model=1152, n_layers=27, n_heads=16, mlp_hidden=4304, max_patches=4096, pos_grid=27
    )
