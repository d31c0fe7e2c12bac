"""The LightningCLI of the stages: ``fit``, ``validate``, ``test`` and ``predict`` over any stage and datamodule.

A stage is ``fit`` plus a config file: the YAML picks the stage module (``model.class_path``) and datamodule
(``data.class_path``); stacked ``--config`` files override only what changes. The dispatcher (``cli.py``) and the
pipeline (which checks every stage's composed config before running any) import this module; it imports neither.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from mm_lightning.callbacks import (
    FinalValidation,
    NonFiniteGuard,
    PredictionWriter,
    StageCheckpoint,
    TokenThroughputMonitor,
)
from mm_lightning.checkpoint import check_checkpoint_fits
from mm_lightning.errors import ConfigError, find_user_error
from mm_lightning.precision import AutoPrecisionTrainer
from mm_lightning.stages import StageModule


class FitConfigOnly(SaveConfigCallback):
    """Writes ``config.yaml`` beside the logs in ``fit`` only: a ``validate`` of a finished stage must not replace
    the config its run was trained with (the pipeline's manifest points to it)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class MMLightningCLI(LightningCLI):
    """LightningCLI over any stage module and datamodule, with the throughput monitor, NaN guard, prediction writer
    and final validation always on (``predict`` writes ``predictions.jsonl`` in its log folder; ``--predictions.path``
    elsewhere; every stage validates at its last step, :class:`~mm_lightning.callbacks.FinalValidation`).

    Unlike LightningCLI, ``--ckpt_path`` does not replace the model's arguments with the checkpoint's: the config
    decides the model, and a checkpoint that does not fit it (another stage or architecture, another optimizer
    or schedule when resuming) is refused, naming what differs (:func:`~mm_lightning.checkpoint.check_checkpoint_fits`).
    ``validate``/``test``/``predict`` log into a ``<subcommand>/`` folder under the run's log folder, never into the
    training run's own event files.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(FinalValidation, "final_validation")

    def _parse_ckpt_path(self) -> None:
        pass  # the config decides the model; before_<subcommand> checks that the checkpoint fits it

    def _ckpt_path(self) -> str | None:
        return self.config[self.subcommand].get("ckpt_path")

    def before_fit(self) -> None:
        if self._ckpt_path():
            check_checkpoint_fits(self.model, self._ckpt_path(), resuming=True)

    def after_fit(self) -> None:
        """A run resumed at (or past) its last step trained nothing: validate it and write its ``last.ckpt``.

        (A run that trained validated at its last step already: ``FinalValidation``.)"""
        ckpt_path, trainer = self._ckpt_path(), self.trainer
        checkpoint = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, StageCheckpoint)), None)
        if not ckpt_path or checkpoint is None or checkpoint.trained or trainer.interrupted:
            return
        if trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
            return
        if trainer.is_global_zero:
            print(f"mm-lightning fit: {ckpt_path} is at step {trainer.global_step} of {trainer.max_steps}: nothing "
                  "left to train; running the final validation and writing last.ckpt", flush=True)  # fmt: skip
        if trainer.limit_val_batches != 0 and self.datamodule is not None:
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        checkpoint.write_last_from(trainer, ckpt_path)

    def _before_evaluation(self) -> None:
        if self._ckpt_path():
            check_checkpoint_fits(self.model, self._ckpt_path(), resuming=False)
        logger = self.trainer.logger
        if isinstance(logger, TensorBoardLogger):
            logger._sub_dir = self.subcommand  # Lightning has no setter; the experiment is not created yet

    before_validate = before_test = before_predict = _before_evaluation


# what every mm-lightning CLI parses: any stage module, any datamodule, optimizers from the stage itself, and
# trainer.precision: bf16-auto (bf16-mixed where the device computes bf16 natively, else 32-true)
CLI_CLASSES = dict(
    trainer_class=AutoPrecisionTrainer,
    model_class=StageModule,
    subclass_mode_model=True,
    datamodule_class=LightningDataModule,
    subclass_mode_data=True,
    auto_configure_optimizers=False,
)


class ParseOnlyCLI(MMLightningCLI):
    """Parses and validates a config; instantiates nothing (so a GPU config checks on any machine)."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str | None) -> None:
        pass


def check_fit_config(path: Path) -> None:
    """Raise a ``ConfigError`` with the parser's message if ``mm-lightning fit --config path`` would refuse it."""
    no_exit = {"exit_on_error": False}
    try:
        ParseOnlyCLI(
            **CLI_CLASSES, args=["fit", "--config", str(path)], parser_kwargs={**no_exit, "fit": no_exit},
            seed_everything_default=False,
        )  # fmt: skip
    except Exception as error:  # jsonargparse's ArgumentError, or a project error raised while resolving
        message = str(find_user_error(error) or error)  # all of it: run_command prints one line
        raise ConfigError(f"the composed config does not parse: {message}") from None


def build_cli(args: list[str] | None = None, run: bool = True) -> MMLightningCLI:
    """Build (and by default run) the CLI on ``args`` (a subcommand first); tests use ``run=False``."""
    return MMLightningCLI(
        **CLI_CLASSES, save_config_callback=FitConfigOnly, save_config_kwargs={"overwrite": True}, args=args, run=run
    )


def main(argv: list[str]) -> None:
    """Run a LightningCLI subcommand (``argv`` starts with ``fit``, ``validate``, ``test`` or ``predict``)."""
    build_cli(argv)
