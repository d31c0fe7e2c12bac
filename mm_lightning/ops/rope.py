"""Rotary position embeddings (RoFormer, Su et al. 2021) with a base that may change at run time; 1-D and 2-D.

The cos/sin tables are computed from ``position_ids`` on every call rather than cached at build time,
so switching the base (Kimi-VL's long-context stage: 50,000 -> 800,000) or the sequence length needs
no rebuild, and packed rows (positions restarting per document) cost nothing extra. Image patches use a
2-D variant (:func:`rope_2d_cos_sin`): half of the frequency pairs follow the patch row, half the column.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_cos_sin(position_ids: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for the given positions.

    Args:
        position_ids: ``[B, T]`` integer positions.
        head_dim: per-head width (even).
        base: RoPE base (theta).
        dtype: dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each ``[B, 1, T, head_dim]``, ready to broadcast over heads.
    """
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponent)  # [D/2]
    angles = position_ids[..., None].float() * inv_freq  # [B, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, T, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[B, H, T, D]`` by the tables from :func:`rope_cos_sin` (half-split convention).

    The result keeps ``x``'s dtype: under bf16 autocast the tables are float32 (built from the float32 residual
    stream) while ``q``/``k`` come out of a bf16 matmul; the rotation runs in float32 and ``q``, ``k``, ``v`` reach
    the attention kernel in one dtype (as Llama's ``type_as``)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def grid_position_ids(grid_hw: Tensor) -> Tensor:
    """(row, column) of every patch of packed row-major image grids. ``[n, 2] -> [N, 2]`` int64."""
    counts = grid_hw.prod(dim=1)  # [n] patches per image
    starts = torch.cumsum(counts, dim=0) - counts  # [n]
    local = torch.arange(int(counts.sum()), device=grid_hw.device) - torch.repeat_interleave(starts, counts)  # [N]
    widths = torch.repeat_interleave(grid_hw[:, 1], counts)  # [N]
    return torch.stack((local // widths, local % widths), dim=-1)


def rope_2d_cos_sin(grid_hw: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for 2-D rotary positions of packed image patches (MoonViT, Qwen2-VL style).

    Half of the rotary frequency pairs turn with the patch's row, the other half with its column, each
    half a 1-D RoPE of width ``head_dim // 2``; positions restart at (0, 0) in every image. The tables
    use the half-split layout of :func:`apply_rope`.

    Args:
        grid_hw: ``[n_images, 2]`` patch grids ``(h, w)`` in packing order.
        head_dim: per-head width, a multiple of 4.
        base: RoPE base (theta).
        dtype: dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each ``[1, 1, N, head_dim]`` with ``N = sum(h * w)``.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2
    exponent = torch.arange(0, axis_dim, 2, device=grid_hw.device, dtype=torch.float32) / axis_dim
    inv_freq = 1.0 / (base**exponent)  # [D/4]
    positions = grid_position_ids(grid_hw).float()  # [N, 2]
    angles = (positions[:, :, None] * inv_freq).flatten(1)  # [N, D/2]: row frequencies, then column ones
    angles = torch.cat((angles, angles), dim=-1)[None, None]  # [1, 1, N, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)
