"""``StageCheckpoint``: Lightning's ``ModelCheckpoint`` with ``{step}`` in file names on the pipeline's global step.

The stages log a ``step`` key so that TensorBoard draws every stage on the recipe's global step; that key also
reaches ``ModelCheckpoint``'s file names, where it is the index of the last batch (``step249.ckpt`` after 250
steps) and, in a continuing stage, includes the stage's offset. Here ``{step}`` is the global step the file
holds, the ``global_step`` in its metadata: ``step250.ckpt`` after step 250 of stage 1, ``step260.ckpt`` after
10 steps of a joint stage that continues from step 250.

It also writes ``last.ckpt`` at the end of training when the last step was not saved yet: Lightning's own
only does so when nothing was saved during the run, so a ``max_steps`` that the save interval does not
divide left ``last.ckpt`` at the last interval, and the pipeline counted the stage as unfinished.

Its defaults are the stages' checkpoint policy (``step{step}`` names, every file kept, ``last.ckpt``), so a stage
config gives only ``dirpath`` and ``every_n_train_steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``{step}`` is the checkpoint's global step.

    Args:
        dirpath: the folder of the checkpoint files.
        filename: ``step250.ckpt`` by default, on the global step (with ``auto_insert_metric_name`` off).
        auto_insert_metric_name: off, so that ``step{step}`` gives ``step250``, not ``step=250``.
        save_top_k: every periodic checkpoint is kept by default (there is no metric to rank them by).
        save_last: ``last.ckpt``, which the next stage and the pipeline read, on by default.
        **kwargs: the other ``ModelCheckpoint`` arguments (``every_n_train_steps``, ...).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = "step{step}",
        *,
        auto_insert_metric_name: bool = False,
        save_top_k: int = -1,
        save_last: bool | Literal["link"] | None = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            auto_insert_metric_name=auto_insert_metric_name,
            save_top_k=save_top_k,
            save_last=save_last,
            **kwargs,
        )

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
