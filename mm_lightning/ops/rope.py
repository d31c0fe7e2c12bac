"""Rotary position embeddings (RoFormer, Su et al. 2021) with a base that may change at run time.

The cos/sin tables are computed from ``position_ids`` on every call rather than cached at build time,
so switching the base (Kimi-VL's long-context stage: 50,000 -> 800,000) or the sequence length needs
no rebuild, and packed rows (positions restarting per document) cost nothing extra.
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
    """Rotate ``x`` ``[B, H, T, D]`` by the tables from :func:`rope_cos_sin` (half-split convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
