"""Rotary position embeddings (RoFormer, Su et al. 2021) with a base that may change at run time; 1-D and 2-D.

The cos/sin tables are computed from ``position_ids`` on every call rather than cached at build time,
so switching the base (Kimi-VL's long-context stage: 50,000 -> 800,000) or the sequence length needs
no rebuild, and packed rows (positions restarting per document) cost nothing extra. Image patches use a
2-D variant (:func:`rope_2d_cos_sin`): half of the frequency pairs follow the patch row, half the column.

A longer context can also be reached by YaRN (Peng et al. 2023, :class:`YaRN`): the frequencies that never turned
once over the trained length are slowed by the length's factor, those that turned many times keep their speed, and
the ones between are blended; the tables then carry YaRN's attention temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class YaRN:
    """YaRN's frequency scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models").

    A frequency pair that turns fewer than ``SLOW_TURNS`` times over ``original_len`` positions never saw its whole
    circle in training: it is slowed by ``factor`` (interpolated), so ``factor`` times longer rows show it only angles
    it has seen. One that turns more than ``FAST_TURNS`` times keeps its speed (extrapolated): it already saw every
    angle, and the short-range order it encodes stays sharp. The pairs between are blended linearly in their index, and
    the attention logits are scaled by ``(0.1 ln(factor) + 1)^2`` (the paper's temperature), through the tables.

    Args:
        factor: how many times longer the new rows are than ``original_len`` (> 1).
        original_len: the row length the model trained on before the switch.
    """

    factor: float
    original_len: int
    FAST_TURNS = 32.0
    SLOW_TURNS = 1.0

    def __post_init__(self) -> None:
        if not self.factor > 1 or self.original_len < 1:
            raise ValueError(f"YaRN needs factor > 1 and original_len >= 1, got {self.factor} and {self.original_len}")

    def pair_at_turns(self, turns: float, head_dim: int, base: float) -> float:
        """The (fractional) pair index whose frequency turns ``turns`` times over ``original_len`` positions."""
        return head_dim * math.log(self.original_len / (turns * 2 * math.pi)) / (2 * math.log(base))

    def scale(self, inv_freq: Tensor, base: float) -> Tensor:
        """``inv_freq`` ``[D/2]`` with the slow pairs interpolated and the fast ones kept."""
        head_dim = 2 * inv_freq.numel()
        first = max(math.floor(self.pair_at_turns(self.FAST_TURNS, head_dim, base)), 0)
        last = min(math.ceil(self.pair_at_turns(self.SLOW_TURNS, head_dim, base)), head_dim - 1)
        pairs = torch.arange(inv_freq.numel(), device=inv_freq.device, dtype=torch.float32)
        slowed = ((pairs - first) / max(last - first, 1e-3)).clamp(0, 1)  # 0: kept, 1: interpolated
        return inv_freq * (1 - slowed) + inv_freq / self.factor * slowed

    @property
    def magnitude(self) -> float:
        """What the tables are multiplied by: each of q and k grows by it, the logits by its square."""
        return 0.1 * math.log(self.factor) + 1.0


def rope_cos_sin(
    position_ids: Tensor, head_dim: int, base: float, dtype: torch.dtype, yarn: YaRN | None = None
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for the given positions.

    Args:
        position_ids: ``[B, T]`` integer positions.
        head_dim: per-head width (even).
        base: RoPE base (theta).
        dtype: dtype of the returned tables.
        yarn: YaRN's frequency scaling on top of ``base`` (None: plain RoPE).

    Returns:
        ``(cos, sin)``, each ``[B, 1, T, head_dim]``, ready to broadcast over heads.
    """
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponent)  # [D/2]
    if yarn is not None:
        inv_freq = yarn.scale(inv_freq, base)
    angles = position_ids[..., None].float() * inv_freq  # [B, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, T, D]
    cos, sin = angles.cos(), angles.sin()
    if yarn is not None:  # plain RoPE, every forward's case, skips the two multiplications
        cos, sin = cos * yarn.magnitude, sin * yarn.magnitude
    return cos.to(dtype), sin.to(dtype)


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
