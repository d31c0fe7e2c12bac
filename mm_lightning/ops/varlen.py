"""Attention over packed sequences that skips what the block-diagonal mask excludes, on plain SDPA.

A packed row of ``T`` tokens holding documents (or images) of lengths ``l_1 .. l_n`` costs ``T**2`` score
entries under a dense mask, of which only ``sum(l_i**2)`` are used: 64 images of 64 patches packed together
do 64x the work of attending within each image, and a 2,048-token row of 256-token documents 8x.

Here the documents of all rows are grouped by length into buckets; each bucket is gathered into a batch
``[n_b, H, L_b, D]`` (``L_b`` its longest document), attended by one SDPA call, and the outputs are gathered
back into the packed layout (gathers only: their backward is an ``index_add``). The buckets keep SDPA on its
fastest, maskless kernel wherever the mask is implied:

- documents of one length (images of one patch grid) are a plain reshape of the packed row, no copy;
- causal attention needs no mask at all: padding slots come after a document's real tokens, so a real query
  never sees them (``is_causal=True``), and a padding query's output is never read back;
- only bidirectional attention over documents of different lengths in one bucket carries a key-padding mask.

Lengths are bucketed four to an octave, so a document pads by less than 19% (41% more score entries).
:func:`plan_segments` keeps the dense mask only where the buckets would cost more (rows of one document each,
all but one of nearly one length). The result equals the dense-mask path up to float summation order, values and
gradients (tests/ops/test_varlen.py).

The plan needs the document lengths on the host, one device sync; it is computed once per ``seq_ids`` tensor
and reused by every layer of the forward (a single-entry cache keyed on the tensor object).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.ops.packing import seqlens_from_seq_ids

STEPS_PER_OCTAVE = 4
"""Buckets per doubling of length: a document pads to under ``2**(1/4)`` times its length (19% more slots)."""


@dataclass(frozen=True)
class Bucket:
    """Documents of similar length attended together as one ``[n, H, length, D]`` batch."""

    index: Tensor
    """``[n * length]`` flat token index of each slot (a padding slot repeats its document's last token)."""
    length: int
    """Slots per document: the bucket's longest document."""
    key_mask: Tensor | None
    """``[n, 1, 1, length]`` True on real keys; None when no real query can reach a padding key."""


@dataclass(frozen=True)
class SegmentPlan:
    """How the documents of a packed batch are attended: one reshape, or buckets plus a gather back."""

    buckets: tuple[Bucket, ...]
    """Empty when every document has the same length (``doc_len``): the packed row is reshaped."""
    doc_len: int
    """The common document length when ``buckets`` is empty, else 0."""
    index: Tensor | None
    """``[sum(n_b * L_b)]`` the buckets' ``index`` concatenated: one gather serves them all (None when reshaped)."""
    inverse: Tensor | None
    """``[B * T]`` slot of each token in the concatenated bucket outputs (None when reshaped)."""
    causal: bool
    """Whether a token sees only the earlier tokens of its document."""


_cache: tuple[weakref.ref, bool, SegmentPlan | None] | None = None
_dense_only = False


@contextlib.contextmanager
def dense_mask_attention() -> Iterator[None]:
    """Within this context packed attention uses the dense block-diagonal mask (for comparisons and benchmarks)."""
    global _dense_only
    previous, _dense_only = _dense_only, True
    try:
        yield
    finally:
        _dense_only = previous


@torch.compiler.disable  # reads lengths on the host and keeps a cache: plain Python, outside compiled graphs
def plan_segments(seq_ids: Tensor, causal: bool) -> SegmentPlan | None:
    """The plan for ``seq_ids`` ``[B, T]``, or None when the dense mask costs no more (or is forced).

    Cached for the last ``seq_ids`` tensor seen (the same object reaches every layer of a forward).
    """
    global _cache
    if _dense_only:
        return None
    if _cache is not None and _cache[0]() is seq_ids and _cache[1] == causal:
        return _cache[2]
    plan = _build_plan(seq_ids, causal)
    _cache = (weakref.ref(seq_ids), causal, plan)
    return plan


def bucket_of(length: int) -> int:
    """The bucket of a document of ``length`` tokens: lengths within a factor ``2**(1/4)`` share one."""
    return math.floor(STEPS_PER_OCTAVE * math.log2(length))


def _build_plan(seq_ids: Tensor, causal: bool) -> SegmentPlan | None:
    batch, seq_len = seq_ids.shape
    lengths = seqlens_from_seq_ids(seq_ids)
    if len(set(lengths)) == 1:
        return SegmentPlan(buckets=(), doc_len=lengths[0], index=None, inverse=None, causal=causal)
    groups: dict[int, list[int]] = {}
    for doc, length in enumerate(lengths):
        groups.setdefault(bucket_of(length), []).append(doc)
    longest = {key: max(lengths[d] for d in docs) for key, docs in groups.items()}
    if sum(len(docs) * longest[key] ** 2 for key, docs in groups.items()) >= batch * seq_len**2:
        return None
    device = seq_ids.device
    lengths_t = torch.tensor(lengths, device=device)  # [n]
    starts = torch.cumsum(lengths_t, 0) - lengths_t  # [n] first flat token of each document
    inverse = torch.empty(batch * seq_len, dtype=torch.long, device=device)  # [B*T]
    buckets, offset = [], 0
    for key, docs in sorted(groups.items()):
        docs_t = torch.tensor(docs, device=device)  # [n_b]
        length, doc_lens = longest[key], lengths_t[docs_t]
        slots = torch.arange(length, device=device)  # [L]
        valid = slots < doc_lens[:, None]  # [n_b, L]
        index = starts[docs_t, None] + torch.minimum(slots, doc_lens[:, None] - 1)  # [n_b, L]
        inverse[index[valid]] = offset + torch.arange(len(docs) * length, device=device).view(-1, length)[valid]
        ragged = not causal and any(lengths[d] != length for d in docs)
        buckets.append(Bucket(index.flatten(), length, valid[:, None, None, :] if ragged else None))
        offset += len(docs) * length
    index = torch.cat([bucket.index for bucket in buckets])
    return SegmentPlan(buckets=tuple(buckets), doc_len=0, index=index, inverse=inverse, causal=causal)


@torch.compiler.disable  # bucket shapes change from batch to batch: compiling them would recompile every step
def segmented_attention(q: Tensor, k: Tensor, v: Tensor, plan: SegmentPlan) -> Tensor:
    """SDPA within each document of a packed batch, following ``plan``.

    Args:
        q: ``[B, H, T, D]`` queries; ``k``, ``v``: ``[B, Hkv, T, D]`` (grouped-query keys and values).
        plan: from :func:`plan_segments` on the batch's ``seq_ids``.

    Returns:
        ``[B, H, T, D]``, as the dense-mask SDPA would give.
    """
    batch, n_heads, seq_len, head_dim = q.shape
    gqa = q.shape[1] != k.shape[1]
    tokens = [t.transpose(1, 2).reshape(batch * seq_len, t.shape[1], head_dim) for t in (q, k, v)]  # [B*T, h, D]
    if not plan.buckets:  # equal lengths: documents are consecutive slices of the flat token axis
        q_, k_, v_ = (t.view(-1, plan.doc_len, t.shape[1], head_dim).transpose(1, 2) for t in tokens)  # [n, h, L, D]
        out = F.scaled_dot_product_attention(q_, k_, v_, is_causal=plan.causal, enable_gqa=gqa)  # [n, H, L, D]
        return out.transpose(1, 2).reshape(batch, seq_len, n_heads, head_dim).transpose(1, 2)
    sizes = [bucket.index.numel() for bucket in plan.buckets]
    pieces = [t.index_select(0, plan.index).split(sizes) for t in tokens]  # one gather: its backward one index_add
    outputs = []
    for bucket, q_, k_, v_ in zip(plan.buckets, *pieces):
        q_, k_, v_ = (t.view(-1, bucket.length, t.shape[1], head_dim).transpose(1, 2) for t in (q_, k_, v_))
        causal = plan.causal and bucket.length > 1  # [n_b, h, L_b, D] each
        out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=bucket.key_mask, is_causal=causal, enable_gqa=gqa)
        outputs.append(out.transpose(1, 2).reshape(-1, n_heads, head_dim))  # [n_b * L_b, H, D]
    flat = torch.cat(outputs).index_select(0, plan.inverse)  # [B*T, H, D]
    return flat.view(batch, seq_len, n_heads, head_dim).transpose(1, 2)
