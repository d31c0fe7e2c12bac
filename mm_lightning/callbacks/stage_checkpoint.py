"""``StageCheckpoint``: Lightning's ``ModelCheckpoint`` with ``{step}`` in file names on the pipeline's global step.

The stages log a ``step`` key so that TensorBoard draws every stage on the recipe's global step; that key also
reaches ``ModelCheckpoint``'s file names, where it is the index of the last batch (``step249.ckpt`` after 250
steps) and, in a continuing stage, includes the stage's offset. Here ``{step}`` is the global step the file
holds, the ``global_step`` in its metadata: ``step250.ckpt`` after step 250 of stage 1, ``step260.ckpt`` after
10 steps of a joint stage that continues from step 250.
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

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        trainer = getattr(self, "_stage_trainer", None)
        if trainer is not None:
            offset = getattr(trainer.lightning_module, "global_step_offset", 0)
            metrics = {**metrics, "step": torch.tensor(offset + trainer.global_step)}
        return super().format_checkpoint_name(metrics, *args, **kwargs)
