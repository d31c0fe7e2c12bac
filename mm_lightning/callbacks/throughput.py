"""Throughput (tokens/s, FLOP/s and, on GPUs Lightning knows, MFU) for the stages' dict batches.

A thin specialisation of Lightning's ``ThroughputMonitor``: it knows how to count rows and tokens in
our batches; the FLOPs come from the stage's ``flops_per_batch``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ThroughputMonitor


def rows_in_batch(batch: dict[str, Any]) -> int:
    """Samples in a batch: packed text rows, or image-caption pairs."""
    return batch["input_ids"].shape[0] if "input_ids" in batch else batch["caption_ids"].shape[0]


def tokens_in_batch(batch: dict[str, Any]) -> int:
    """Positions a batch computes on: text tokens, or image patches plus caption tokens."""
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return batch["patches"].shape[1] + batch["caption_ids"].numel()


class TokenThroughputMonitor(ThroughputMonitor):
    """``ThroughputMonitor`` over ``input_ids`` rows and tokens.

    Args:
        window_size: number of batches the rates are averaged over.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=rows_in_batch, length_fn=tokens_in_batch, window_size=window_size)

    def _compute(self, trainer: pl.Trainer, iter_num: int | None = None) -> None:
        # on the pipeline's global step, like the stage's own scalars
        offset = getattr(trainer.lightning_module, "global_step_offset", 0)
        super()._compute(trainer, None if iter_num is None else iter_num + offset)
