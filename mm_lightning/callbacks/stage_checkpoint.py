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
config gives only ``every_n_train_steps``; the folder follows the logger's name. A name is never versioned
(``last-v1.ckpt``): a step's file is that step's state, and ``last.ckpt`` is always the newest, also in a run
folder that was moved.

In ``fit`` it also keeps the folder safe:

- every file is written whole or not at all (:class:`~mm_lightning.atomic_io.AtomicCheckpointIO`: a temporary
  file beside the target, fsynced, renamed), and temporary files of dead writers are removed;
- one process at a time: the folder's lock (:class:`~mm_lightning.run_lock.RunLock`) names the holder;
- a fresh run (no ``--ckpt_path``) is refused where checkpoints of an earlier run already lie, which it would
  overwrite; the message says how to resume that run or where else to write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from mm_lightning.atomic_io import AtomicCheckpointIO, copy_file, is_local, remove_orphans
from mm_lightning.errors import ConfigError
from mm_lightning.run_lock import RunLock


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``{step}`` is the checkpoint's global step.

    Args:
        dirpath: the folder of the checkpoint files; by default ``<save_dir>/<name>/checkpoints`` of the first logger
            (``runs/text_pretrain_tiny/checkpoints``), so ``--trainer.logger.init_args.name`` names a new run.
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
        enable_version_counter: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            auto_insert_metric_name=auto_insert_metric_name,
            save_top_k=save_top_k,
            save_last=save_last,
            enable_version_counter=enable_version_counter,
            **kwargs,
        )
        self.trained = False
        self._lock: RunLock | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None and trainer.loggers and trainer.loggers[0].save_dir and trainer.loggers[0].name:
            logger = trainer.loggers[0]  # <save_dir>/<name>/checkpoints: a run's name moves its logs and checkpoints
            self.dirpath = os.path.join(logger.save_dir, str(logger.name), "checkpoints")
        super().setup(trainer, pl_module, stage)
        self._stage_trainer = trainer
        if stage != "fit" or self.dirpath is None or not is_local(self.dirpath):
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: swap in the atomic one
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero:
            folder = Path(self.dirpath)
            self._lock = RunLock(folder, "checkpoint folder").acquire()
            remove_orphans(folder)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        super().teardown(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trained = True
        # here, not in setup: only now does the trainer know (under every strategy) whether it resumed
        if trainer.is_global_zero and trainer.ckpt_path is None and self.dirpath and is_local(self.dirpath):
            _refuse_overwrite(Path(self.dirpath))
        super().on_train_start(trainer, pl_module)

    def write_last_from(self, trainer: pl.Trainer, source: str | Path) -> Path | None:
        """Make ``last.ckpt`` a copy of ``source`` (a resumed run that had no step left to train), on rank zero."""
        if not self.save_last or self.dirpath is None:
            return None
        target = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if trainer.is_global_zero and Path(source).resolve() != target.resolve():
            copy_file(source, target)
        trainer.strategy.barrier("stage_checkpoint_last")
        return target

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


def _refuse_overwrite(folder: Path) -> None:
    existing = sorted(path.name for path in folder.glob("*.ckpt"))
    if existing:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise ConfigError(
            f"{folder} already holds checkpoints of an earlier run ({shown}), which a fresh run would overwrite; "
            f"continue that run with --ckpt_path {folder / 'last.ckpt'}, or move the folder away, or name a new run "
            "with --trainer.logger.init_args.name NAME (its checkpoints go to <save_dir>/NAME/checkpoints)"
        )
