"""The ``mm-lightning`` command: a LightningCLI whose stages are ``fit`` plus a config file.

``mm-lightning fit --config configs/text_pretrain/tiny.yaml`` runs a stage; the YAML picks the stage module and
datamodule by ``class_path``; stacked ``--config`` files override only what changes. Lightning's other
subcommands (``validate``, ``test``, ``predict``) work the same way. Three more are not Trainer methods:
``mm-lightning pipeline`` runs several stages from one file (``pipeline_cli.py``), ``mm-lightning generate``
samples from a checkpoint (``generate_cli.py``) and ``mm-lightning evaluate`` scores held-out text
(``evaluate_cli.py``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mm_lightning.callbacks import TokenThroughputMonitor
from mm_lightning.errors import ConfigError, MMLightningError
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
        message = str(find_user_error(error) or error).splitlines()[0]
        raise ConfigError(f"the composed config does not parse: {message}") from None


def build_cli(args: list[str] | None = None, run: bool = True) -> MMLightningCLI:
    """Build (and by default run) the CLI; ``args`` default to ``sys.argv``. Tests use ``run=False``."""
    return MMLightningCLI(
        **CLI_CLASSES,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the ``mm-lightning`` console script."""
    # deprecation noise from inside Lightning and litdata, not actionable by users of the command
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    if sys.argv[1:2] == ["generate"]:
        from mm_lightning.generate_cli import main as generate_main

        generate_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["pipeline"]:
        from mm_lightning.pipeline_cli import main as pipeline_main

        pipeline_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["evaluate"]:
        from mm_lightning.evaluate_cli import main as evaluate_main

        evaluate_main(sys.argv[2:])
        return
    try:
        build_cli()
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"mm-lightning: error: {user_error}", file=sys.stderr)  # a user's mistake: one line, no traceback
        raise SystemExit(2) from None


def find_user_error(error: BaseException) -> MMLightningError | None:
    """The project error behind ``error``, also when jsonargparse re-raised it while instantiating a class."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, MMLightningError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    main()
