"""``mm-lightning pipeline``: run a pipeline file's stages in order, resumably (:mod:`~mm_lightning.pipeline.runner`).

mm-lightning pipeline --config configs/pipelines/demo.yaml              # every stage; rerun to resume
mm-lightning pipeline --config configs/pipelines/demo.yaml --dry-run    # the plan only
mm-lightning pipeline --config configs/pipelines/demo.yaml --stages joint,cooldown
mm-lightning pipeline --config configs/pipelines/demo.yaml --redo joint # joint and what consumes it again
mm-lightning pipeline --config configs/pipelines/demo.yaml --concurrent 1  # one stage at a time
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from mm_lightning.errors import ConfigError
from mm_lightning.pipeline.runner import run_pipeline
from mm_lightning.pipeline.spec import load_pipeline


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mm-lightning pipeline",
        description="Run a pipeline file's stages in dependency order, each as `mm-lightning fit`. Rerunning "
        "the same command skips finished stages and continues a stopped one from its newest checkpoint.",
    )
    parser.add_argument("--config", required=True, help="the pipeline file, e.g. configs/pipelines/demo.yaml")
    parser.add_argument("--run-dir", help="where the stages, manifest and report go (default: the file's run_dir)")
    parser.add_argument("--stages", help="comma-separated stage names to run (default: all)")
    parser.add_argument("--redo", help="comma-separated stages to start over, with every stage that consumes them")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted config key set in every stage, e.g. trainer.num_nodes=2 (repeatable; VALUE is YAML)",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        metavar="N",
        help="run up to N stages at once where none consumes another's checkpoint, the CPU cores split between "
        "them (default: the file's concurrent_stages, else 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser.parse_args(argv)


def _settings(pairs: list[str]) -> dict[str, Any]:
    settings = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, not {pair!r}.")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({error}).") from None
    return settings


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def main(argv: list[str]) -> None:
    """Run ``mm-lightning pipeline``; errors and stops propagate to :func:`~mm_lightning.errors.run_command`."""
    args = parse_args(argv)
    spec = load_pipeline(
        args.config, run_dir=args.run_dir, overrides=_settings(args.set), concurrent_stages=args.concurrent
    )
    run_pipeline(spec, only=_names(args.stages), redo=_names(args.redo), dry_run=args.dry_run)
