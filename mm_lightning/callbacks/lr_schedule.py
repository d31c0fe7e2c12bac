"""The recipe's LR hand-offs between stages: resume an earlier stage's schedule, and re-warm it up.

``LRSchedulerResume`` (joint pre-training after text pre-training; cooldown after joint pre-training) reads
the global step and the schedule table that the earlier stage's checkpoint recorded and makes them this
stage's: the LR at this stage's first step is the table's LR at that global step, with no fresh warmup.
``ReWarmup`` (the cooldown) appends one piece to the table: from the LR reached so far up to a new peak,
then down to the floor by the end of the stage. Both act in ``setup``, before the optimizer and its
scheduler are built; the LR is always ``lr_at_table(table, global_step)``, never a scheduler's internals.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import ConfigError
from mm_lightning.schedules import LRSchedule, fit_table_to_stage, lr_at_table, rewarmup_piece


class LRSchedulerResume(pl.Callback):
    """Continue the global step and LR schedule table of an earlier stage's checkpoint.

    Args:
        checkpoint: the earlier stage's ``.ckpt`` (e.g. stage 1's ``last.ckpt``).
    """

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self._applied_to: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.apply(pl_module)

    def apply(self, pl_module: pl.LightningModule) -> None:
        """Set the module's ``global_step_offset`` and ``schedule_table`` from the checkpoint (once)."""
        if self._applied_to == id(pl_module):
            return
        meta = checkpoint_meta(load_checkpoint(self.checkpoint), self.checkpoint)
        pieces = meta.get("schedule_table") or [meta["schedule"]]
        pl_module.global_step_offset = int(meta["global_step"])
        pl_module.schedule_table = [LRSchedule(**piece) for piece in pieces]
        self._applied_to = id(pl_module)
        lr = lr_at_table(pl_module.schedule_table, pl_module.global_step_offset)
        rank_zero_info(
            f"LRSchedulerResume: continuing {meta.get('stage', 'a stage')}'s schedule from {self.checkpoint} "
            f"at global step {pl_module.global_step_offset} (LR {lr:.3g})"
        )


class ReWarmup(pl.Callback):
    """Warm the LR up from its current value to a higher peak, then decay to ``min_lr`` by the stage's end.

    Args:
        peak_lr: the new peak.
        min_lr: the floor reached at the end of the stage.
        warmup_steps: steps of the climb.
        total_steps: steps of the whole piece (default: the trainer's ``max_steps``, i.e. the stage).
        decay_shape: ``cosine`` or ``linear`` decay after the peak.
        start_step: global step where the piece starts (default: this stage's first step).
    """

    def __init__(
        self,
        peak_lr: float,
        min_lr: float,
        warmup_steps: int,
        total_steps: int | None = None,
        decay_shape: Literal["linear", "cosine"] = "cosine",
        start_step: int | None = None,
    ) -> None:
        self.peak_lr, self.min_lr, self.warmup_steps = peak_lr, min_lr, warmup_steps
        self.total_steps, self.decay_shape, self.start_step = total_steps, decay_shape, start_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for callback in trainer.callbacks:  # the table to extend is the resumed one, whatever the order
            if isinstance(callback, LRSchedulerResume):
                callback.apply(pl_module)
        total = self.total_steps or trainer.max_steps
        if total is None or total <= 0:
            raise ConfigError("ReWarmup needs total_steps or trainer.max_steps to know where the decay ends")
        start = pl_module.global_step_offset if self.start_step is None else self.start_step
        # a stage's own piece without total_steps gets the stage's length first (a resumed table has its lengths)
        table = fit_table_to_stage(pl_module.schedule_table, pl_module.global_step_offset, trainer.max_steps)
        table = [piece for piece in table if piece.start_step < start]
        if not table:
            raise ConfigError(
                f"ReWarmup at global step {start} has no earlier schedule to warm up from; resume one with "
                "LRSchedulerResume (or start the stage at a global_step_offset past its first piece)"
            )
        piece = rewarmup_piece(table, start, self.peak_lr, self.min_lr, self.warmup_steps, total, self.decay_shape)
        pl_module.schedule_table = [*table, piece]
        rank_zero_info(
            f"ReWarmup: from LR {piece.start_lr:.3g} at global step {start} to {self.peak_lr:.3g} over "
            f"{self.warmup_steps} steps, then {self.decay_shape} decay to {self.min_lr:.3g} at step {start + total}"
        )
