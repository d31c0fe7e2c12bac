"""``StageCheckpoint``: Lightning's ``ModelCheckpoint`` with ``{step}`` in file names on the pipeline's global step.

The stages log a ``step`` key so that TensorBoard draws every stage on the recipe's global step; that key also
reaches ``ModelCheckpoint``'s file names, where it is the index of the last batch (``step249.ckpt`` after 250
steps) and, in a continuing stage, includes the stage's offset. Here ``{step}`` is the global step the file
holds, the ``global_step`` in its metadata: ``step250.ckpt`` after step 250 of stage 1, ``step260.ckpt`` after
10 steps of a joint stage that continues from step 250.

It also writes ``last.ckpt`` at the end of training when the last step was not saved yet: Lightning's own
only does so when nothing was saved during the run, so a ``max_steps`` that the save interval does not
divide left ``last.ckpt`` at the last interval, and the pipeline counted the stage as unfinished.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``{step}`` is the checkpoint's global step."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage_trainer = trainer

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        trainer = getattr(self, "_stage_trainer", None)
        if trainer is not None:
            offset = getattr(trainer.lightning_module, "global_step_offset", 0)
            metrics = {**metrics, "step": torch.tensor(offset + trainer.global_step)}
        return super().format_checkpoint_name(metrics, *args, **kwargs)
