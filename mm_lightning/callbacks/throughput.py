"""Throughput (tokens/s, FLOP/s and, on GPUs Lightning knows, MFU) for the stages' dict batches.

A thin specialisation of Lightning's ``ThroughputMonitor``: it knows how to count rows and tokens in
our batches; the FLOPs come from the stage's ``flops_per_batch``, which every stage sets at each training step
(:mod:`mm_lightning.models.flops`), so FLOP/s are a training figure: a validation's would count a training step's
FLOPs per batch, and are left out. Its tags sit on the pipeline-global step like every other scalar: training's at
the step the stage logs its loss on, a validation's once, at its end, on the step its figures are on (Lightning logs
them on stage-local steps, and a validation's at every batch, numbered from the run's first validation batch). The
whole validation is kept out of the training time, the checks at its end included (Lightning counts only its
batches: the caption checks made the next training steps look several times slower).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_only


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
        if trainer._logger_connector.should_update_logs:
            self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        """Log the current stage's throughput at the pipeline-global step."""
        stage = trainer.state.stage
        metrics = self._throughputs[stage].compute()
        if stage != RunningStage.TRAINING:
            metrics = {name: value for name, value in metrics.items() if "flops" not in name and "mfu" not in name}
        metrics = {f"{stage.value}{self._throughputs[stage].separator}{k}": v for k, v in metrics.items()}
        trainer._logger_connector.log_metrics(metrics, step=pipeline_step(trainer))

    @rank_zero_only
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                *_: Any, **__: Any) -> None:  # fmt: skip
        if not trainer.sanity_checking:  # counted here, logged once at the end of the validation
            self._update(trainer, pl_module, batch, trainer._evaluation_loop.batch_progress.total.ready)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.stage == RunningStage.VALIDATING:
            self._log(trainer)
        if trainer.state.fn == TrainerFn.FITTING:  # training's clock resumes where its last step ended
            train_times = self._throughputs[RunningStage.TRAINING]._time
            trained_until = self._t0s[RunningStage.TRAINING] + (train_times[-1] if train_times else 0.0)
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - trained_until


def pipeline_step(trainer: pl.Trainer) -> int:
    """The pipeline-global step the stage's own scalars are on at this moment (``StageModule.pipeline_step``).

    In a training batch's hooks Lightning's optimizer step has already counted, while the stage logged the batch's
    loss at the step before it (``_batches_that_stepped``, Lightning's own x-axis); anywhere else, the global step.
    """
    module = trainer.lightning_module
    offset = getattr(module, "global_step_offset", 0)
    if trainer.state.stage == RunningStage.TRAINING:
        return offset + trainer.fit_loop.epoch_loop._batches_that_stepped
    return int(getattr(module, "pipeline_step", offset + trainer.global_step))
