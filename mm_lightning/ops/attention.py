"""One attention interface, several backends: PyTorch SDPA (everywhere) and xformers (CUDA only).

``attention(q, k, v, causal=..., seq_ids=..., backend=...)`` takes heads-first tensors, grouped-query
keys/values and optional packed-sequence ids (see ``ops/packing.py``). xformers is imported lazily and
only on a CUDA device: on a machine without CUDA it is never imported (it warns and has no CPU kernels).
``prefix_causal_attention`` serves KV-cached decoding: queries are the newest tokens of a longer key
sequence; it always runs on SDPA (xformers' block-diagonal masks have no cached-prefix form here).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.errors import ConfigError
from mm_lightning.ops.packing import dense_mask_from_seq_ids, seqlens_from_seq_ids

AttentionBackend = Literal["auto", "sdpa", "xformers"]
BACKENDS = ("auto", "sdpa", "xformers")


@functools.cache
def xformers_available() -> bool:
    """True when CUDA is present and xformers' memory-efficient kernels import."""
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # any import failure (missing, ABI mismatch) means "not available"
        return False
    return True


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
            f"attention backend 'xformers' needs a CUDA device with xformers installed (got device {device}); "
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
    mask = dense_mask_from_seq_ids(seq_ids, causal=causal)  # [B, 1, T, T]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, seq_ids: Tensor | None) -> Tensor:
    from xformers.ops import fmha

    batch, n_heads, seq_len, head_dim = q.shape
    groups = n_heads // k.shape[1]
    # xformers wants [1, B*T, H, D] with a block-diagonal bias over the flattened batch
    q_ = q.transpose(1, 2).reshape(1, batch * seq_len, n_heads, head_dim)
    k_ = k.repeat_interleave(groups, dim=1).transpose(1, 2).reshape(1, batch * seq_len, n_heads, head_dim)
    v_ = v.repeat_interleave(groups, dim=1).transpose(1, 2).reshape(1, batch * seq_len, n_heads, head_dim)
    if seq_ids is None:
        seqlens = [seq_len] * batch
    else:
        seqlens = seqlens_from_seq_ids(seq_ids)
    mask_cls = fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
    out = fmha.memory_efficient_attention(q_, k_, v_, attn_bias=mask_cls.from_seqlens(seqlens))
    return out.reshape(batch, seq_len, n_heads, head_dim).transpose(1, 2)


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
