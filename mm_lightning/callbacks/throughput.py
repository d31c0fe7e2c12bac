"""Throughput (tokens/s, FLOP/s and, on GPUs Lightning knows, MFU) for dict batches of packed rows.

A thin specialisation of Lightning's ``ThroughputMonitor``: it knows how to count rows and tokens in
our batches; the FLOPs come from the stage's ``flops_per_batch``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


def rows_in_batch(batch: dict[str, Any]) -> int:
    """Rows (packed sequences) in a batch."""
    return batch["input_ids"].shape[0]


def tokens_in_batch(batch: dict[str, Any]) -> int:
    """Token positions in a batch."""
    return batch["input_ids"].numel()


class TokenThroughputMonitor(ThroughputMonitor):
    """``ThroughputMonitor`` over ``input_ids`` rows and tokens.

    Args:
        window_size: number of batches the rates are averaged over.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=rows_in_batch, length_fn=tokens_in_batch, window_size=window_size)
