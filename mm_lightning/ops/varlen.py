"""Attention over packed sequences that skips what the block-diagonal mask excludes, on plain SDPA.

A packed row of ``T`` tokens holding documents (or images) of lengths ``l_1 .. l_n`` costs ``T**2`` score
entries under a dense mask, of which only ``sum(l_i**2)`` are used: 64 images of 64 patches packed together
do 64x the work of attending within each image. Here the documents of all rows are gathered into a padded
batch ``[n, H, L, D]`` (``L`` the longest document), attended with a key-padding (and causal) mask, and
scattered back: ``n * L**2`` entries. Documents of very different lengths pad to the longest, so
:func:`plan_segments` compares the two costs and the caller keeps the dense mask when it is cheaper (a long
document beside many short ones).

The result equals the dense-mask path up to float summation order (tests/ops/test_attention.py): every query
sees exactly the keys of its own document, and a padded query slot (never read back) sees at least its
document's first key, so no softmax row is empty.

The gather plan needs the document lengths on the host, one device sync; it is computed once per ``seq_ids``
tensor and reused by every layer of the forward (a single-entry cache keyed on the tensor object).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.ops.packing import seqlens_from_seq_ids


@dataclass(frozen=True)
class SegmentPlan:
    """Where each document of a packed batch lies in the flattened ``[B * T]`` token axis."""

    index: Tensor
    """``[n, L]`` flat token index of each document's slots (padding slots repeat a valid index)."""
    valid: Tensor
    """``[n, L]`` True on a document's real tokens."""
    mask: Tensor
    """``[n, 1, L, L]`` True where a query slot may attend a key slot."""


_cache: tuple[weakref.ref, bool, SegmentPlan | None] | None = None


def plan_segments(seq_ids: Tensor, causal: bool) -> SegmentPlan | None:
    """The gather plan of ``seq_ids`` ``[B, T]``, or None when the dense mask costs no more.

    Cached for the last ``seq_ids`` tensor seen (the same object reaches every layer of a forward).
    """
    global _cache
    if _cache is not None and _cache[0]() is seq_ids and _cache[1] == causal:
        return _cache[2]
    plan = _build_plan(seq_ids, causal)
    _cache = (weakref.ref(seq_ids), causal, plan)
    return plan


def _build_plan(seq_ids: Tensor, causal: bool) -> SegmentPlan | None:
    batch, seq_len = seq_ids.shape
    lengths = seqlens_from_seq_ids(seq_ids)
    longest = max(lengths)
    if len(lengths) * longest**2 >= batch * seq_len**2:
        return None
    device = seq_ids.device
    lengths_t = torch.tensor(lengths, device=device)  # [n]
    starts = torch.cumsum(lengths_t, 0) - lengths_t  # [n] first flat index of each document
    slots = torch.arange(longest, device=device)  # [L]
    valid = slots[None] < lengths_t[:, None]  # [n, L]
    index = starts[:, None] + torch.minimum(slots[None], lengths_t[:, None] - 1)  # [n, L] pads repeat the last
    mask = valid[:, None, None, :].expand(-1, 1, longest, -1)  # [n, 1, L, L]: real keys only
    if causal:
        mask = mask & torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    return SegmentPlan(index=index, valid=valid, mask=mask)


def segmented_attention(q: Tensor, k: Tensor, v: Tensor, plan: SegmentPlan) -> Tensor:
    """SDPA within each document of a packed batch, following ``plan``.

    Args:
        q: ``[B, H, T, D]`` queries; ``k``, ``v``: ``[B, Hkv, T, D]`` (grouped-query keys and values).
        plan: from :func:`plan_segments` on the batch's ``seq_ids``.

    Returns:
        ``[B, H, T, D]``, as the dense-mask SDPA would give.
    """
    batch, n_heads, seq_len, head_dim = q.shape

    def gather(t: Tensor) -> Tensor:  # [B, h, T, D] -> [n, h, L, D]
        flat = t.transpose(1, 2).reshape(batch * seq_len, t.shape[1], head_dim)  # [B*T, h, D]
        return flat[plan.index].transpose(1, 2)

    out = F.scaled_dot_product_attention(
        gather(q), gather(k), gather(v), attn_mask=plan.mask, enable_gqa=q.shape[1] != k.shape[1]
    )  # [n, H, L, D]
    flat_out = q.new_empty(batch * seq_len, n_heads, head_dim)
    flat_out[plan.index[plan.valid]] = out.transpose(1, 2)[plan.valid]  # every token is some document's
    return flat_out.reshape(batch, seq_len, n_heads, head_dim).transpose(1, 2)
