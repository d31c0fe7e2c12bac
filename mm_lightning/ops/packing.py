"""Packed-sequence bookkeeping: several documents (or images) share one row of a batch.

A packed row is described by ``seq_ids`` ``[B, T]``: tokens with the same id belong to the same
document and may attend to each other; ids are non-decreasing along a row. Everything the attention
backends and the RoPE need (dense masks for SDPA, sequence lengths for xformers' block-diagonal mask,
per-document positions) is derived here, so the data side only has to produce ``seq_ids``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def seq_ids_from_eod(tokens: Tensor, eod_id: int) -> Tensor:
    """Document ids for a packed token row: a new document starts right after each end-of-document token.

    Args:
        tokens: ``[B, T]`` token ids.
        eod_id: the end-of-document token id; the EOD token belongs to the document it ends.

    Returns:
        ``[B, T]`` int64 ids, starting at 0 in every row.
    """
    is_eod = (tokens == eod_id).long()  # [B, T]
    return torch.cumsum(is_eod, dim=1) - is_eod  # exclusive cumsum


def document_starts(seq_ids: Tensor) -> Tensor:
    """True where a packed document begins (every row's first position included). ``[B, T] -> [B, T]`` bool."""
    is_start = torch.ones_like(seq_ids, dtype=torch.bool)
    is_start[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    return is_start


def position_ids_from_seq_ids(seq_ids: Tensor) -> Tensor:
    """Positions that restart at 0 at every document start of a packed row. ``[B, T] -> [B, T]``."""
    _, seq_len = seq_ids.shape
    arange = torch.arange(seq_len, device=seq_ids.device).expand_as(seq_ids)  # [B, T]
    is_start = document_starts(seq_ids)
    start_index = torch.where(is_start, arange, torch.zeros_like(arange))
    return arange - torch.cummax(start_index, dim=1).values


def dense_mask_from_seq_ids(seq_ids: Tensor, causal: bool) -> Tensor:
    """Boolean attention mask ``[B, 1, T, T]`` (True = may attend) that keeps documents apart."""
    same_doc = seq_ids[:, :, None] == seq_ids[:, None, :]  # [B, T, T]
    if causal:
        seq_len = seq_ids.shape[1]
        same_doc = same_doc & torch.ones(seq_len, seq_len, dtype=torch.bool, device=seq_ids.device).tril()
    return same_doc[:, None]


def seqlens_from_seq_ids(seq_ids: Tensor) -> list[int]:
    """Lengths of the documents of all rows in order, as for a flattened ``[1, B*T]`` batch."""
    row_offset = torch.arange(seq_ids.shape[0], device=seq_ids.device)[:, None] * (seq_ids.max() + 1)
    flat = (seq_ids + row_offset).flatten()
    _, counts = torch.unique_consecutive(flat, return_counts=True)
    return counts.tolist()
