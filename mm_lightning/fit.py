"""The LightningCLI of the stages: ``fit``, ``validate``, ``test`` and ``predict`` over any stage and datamodule.

A stage is ``fit`` plus a config file: the YAML picks the stage module (``model.class_path``) and datamodule
(``data.class_path``); stacked ``--config`` files override only what changes. The dispatcher (``cli.py``) and the
pipeline (which checks every stage's composed config before running any) import this module; it imports neither.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mm_lightning.callbacks import TokenThroughputMonitor
from mm_lightning.errors import ConfigError, find_user_error
from mm_lightning.stages import StageModule


class MMLightningCLI(LightningCLI):
    """LightningCLI over any stage module and datamodule, with the throughput monitor always on."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput")


# what every mm-lightning CLI parses: any stage module, any datamodule, optimizers from the stage itself
CLI_CLASSES = dict(
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
    return MMLightningCLI(**CLI_CLASSES, save_config_kwargs={"overwrite": True}, args=args, run=run)


def main(argv: list[str]) -> None:
    """Run a LightningCLI subcommand (``argv`` starts with ``fit``, ``validate``, ``test`` or ``predict``)."""
    build_cli(argv)
