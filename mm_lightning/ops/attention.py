"""One attention interface, several backends: PyTorch SDPA (everywhere) and xformers (CUDA only).

On SDPA, packed sequences attend document by document (``ops/varlen.py``: documents bucketed by length, SDPA's
maskless kernel within each bucket) whenever that is cheaper than one dense block-diagonal mask over the whole row,
which is nearly always. PyTorch's FlexAttention is not a backend here: in torch 2.14 it has no backward pass on the
CPU, and on CUDA the bucketed SDPA path runs the flash kernels already.

``attention(q, k, v, causal=..., seq_ids=..., backend=...)`` takes heads-first tensors, grouped-query
keys/values and optional packed-sequence ids (see ``ops/packing.py``). xformers is imported lazily and
only on a CUDA device: on a machine without CUDA it is never imported (it warns and has no CPU kernels).
``prefix_causal_attention`` serves KV-cached decoding: queries are the newest tokens of a longer key
sequence; it always runs on SDPA (xformers' block-diagonal masks have no cached-prefix form here).
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.errors import ConfigError
from mm_lightning.ops.packing import dense_mask_from_seq_ids, seqlens_from_seq_ids
from mm_lightning.ops.varlen import plan_segments, segmented_attention

AttentionBackend = Literal["auto", "sdpa", "xformers"]
BACKENDS = ("auto", "sdpa", "xformers")


@functools.cache
def xformers_available() -> bool:
    """True when CUDA is present and xformers' memory-efficient kernels import *and run* there.

    A wheel built for another torch or CUDA imports fine but has no kernels (seen on an H200 with torch
    2.11+cu130 and xformers 0.0.35, built for 2.10+cu128), so one tiny bf16 call decides; the reason for a
    refusal is warned once and ``auto`` falls back to SDPA.
    """
    if not torch.cuda.is_available():
        return False
    error = xformers_probe_error("cuda")
    if error is not None:
        warnings.warn(f"xformers is not usable here, attention falls back to SDPA: {error}", stacklevel=2)
    return error is None


def xformers_probe_error(device: str) -> str | None:
    """Why xformers' memory-efficient attention fails on ``device`` (None when a tiny bf16 call runs)."""
    try:
        from xformers.ops import fmha

        x = torch.zeros(1, 4, 2, 64, device=device, dtype=torch.bfloat16)
        bias = fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens([2, 2])
        fmha.memory_efficient_attention(x, x, x, attn_bias=bias)
    except Exception as err:  # missing, ABI mismatch, no kernels for this GPU or dtype
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto|sdpa|xformers`` into the backend that will run on ``device``.

    Raises:
        ValueError: for an unknown name, or ``xformers`` where it cannot run.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if backend == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise ConfigError(
            f"attention backend 'xformers' needs a CUDA device where xformers' kernels run (got device {device}"
            f"{'' if device.type != 'cuda' else ': ' + str(xformers_probe_error('cuda'))}); "
            "use 'sdpa' or 'auto'."
        )
    return backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    seq_ids: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Scaled dot-product attention over (optionally packed) sequences.

    Args:
        q: ``[B, H, T, D]`` queries.
        k: ``[B, Hkv, T, D]`` keys; ``H`` must be a multiple of ``Hkv`` (grouped-query attention).
        v: ``[B, Hkv, T, D]`` values.
        causal: whether a token only sees earlier tokens.
        seq_ids: ``[B, T]`` packed-sequence ids; tokens attend only within their own id. None = one sequence a row.
        backend: ``auto``, ``sdpa`` or ``xformers``.

    Returns:
        ``[B, H, T, D]`` attention output.
    """
    if resolve_backend(backend, q.device) == "xformers":
        return _xformers_attention(q, k, v, causal=causal, seq_ids=seq_ids)
    return _sdpa_attention(q, k, v, causal=causal, seq_ids=seq_ids)


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, seq_ids: Tensor | None) -> Tensor:
    gqa = q.shape[1] != k.shape[1]
    if seq_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    plan = plan_segments(seq_ids, causal)
    if plan is not None:  # attend within each document: skips the masked-out blocks of the dense mask
        return segmented_attention(q, k, v, plan)
    mask = dense_mask_from_seq_ids(seq_ids, causal=causal)  # [B, 1, T, T]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, seq_ids: Tensor | None) -> Tensor:
    from xformers.ops import fmha

    batch, n_heads, seq_len, head_dim = q.shape
    q_, k_, v_ = xformers_inputs(q, k, v)
    seqlens = [seq_len] * batch if seq_ids is None else seqlens_from_seq_ids(seq_ids)
    mask_cls = fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
    out = fmha.memory_efficient_attention(q_, k_, v_, attn_bias=mask_cls.from_seqlens(seqlens))
    return out.reshape(batch, seq_len, n_heads, head_dim).transpose(1, 2)


def xformers_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, H, T, D]`` (GQA keys/values) to xformers' ``[1, B*T, H, D]`` layout, all in one dtype.

    Autocast does not reach xformers' custom op, and under bf16 autocast the projections come out in bf16
    while RoPE (computed in float32) promotes q and k: all three go to the autocast dtype when it is on.
    """
    batch, n_heads, seq_len, head_dim = q.shape
    groups = n_heads // k.shape[1]
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype

    def flat(t: Tensor) -> Tensor:
        return t.to(dtype).transpose(1, 2).reshape(1, batch * seq_len, n_heads, head_dim)

    return flat(q), flat(k.repeat_interleave(groups, dim=1)), flat(v.repeat_interleave(groups, dim=1))


def prefix_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of the newest ``T`` tokens over a cached prefix plus themselves, on SDPA.

    Query ``i`` sits at key position ``S - T + i``: it sees the whole prefix and the new tokens up to itself.

    Args:
        q: ``[B, H, T, D]`` queries of the new tokens.
        k: ``[B, Hkv, S, D]`` keys of prefix and new tokens, ``S >= T``.
        v: ``[B, Hkv, S, D]`` values.

    Returns:
        ``[B, H, T, D]`` attention output.
    """
    new_len, total_len = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if new_len == 1:  # a single decode token sees everything
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if new_len == total_len:  # prefill: plain causal
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    query_pos = torch.arange(total_len - new_len, total_len, device=q.device)[:, None]  # [T, 1]
    mask = torch.arange(total_len, device=q.device)[None] <= query_pos  # [T, S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
