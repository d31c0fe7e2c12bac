"""The command line that the ``data_prep/prepare_*.py`` scripts share.

Every script takes its inputs and ``--output``, its own options, then the same run options (``--val-fraction``,
``--strict``, ``--num-workers``, ``--overwrite``, ``--quiet``); bad data ends with a one-line ``error: ...`` and
exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mm_lightning.errors import MMLightningError

OUTPUT_HELP = "output folder (train/, val/, prep_summary.json)"


def build_prep_parser(doc: str, inputs_help: str, output_help: str = OUTPUT_HELP) -> argparse.ArgumentParser:
    """A parser described by the first line of a script's ``doc``, with its ``inputs`` and ``-o/--output``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help=inputs_help)
    parser.add_argument("-o", "--output", required=True, help=output_help)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, item: str, items: str, work: str) -> None:
    """Add ``--val-fraction``, ``--strict``, ``--num-workers``, ``--overwrite`` and ``--quiet``.

    Args:
        parser: a script's parser.
        item: one input item in the help text ("pair", "clip").
        items: several ("pairs", "clips").
        work: what the worker processes do ("decoding", "tokenizing").
    """
    parser.add_argument("--val-fraction", type=float, default=0.02, help=f"share of {items} held out for val")
    parser.add_argument("--strict", action="store_true", help=f"fail at the first bad {item} instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help=f"{work} processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_options(args: argparse.Namespace) -> dict:
    """The run options of parsed arguments as keyword arguments of the ``prepare_*`` functions."""
    return {
        "val_fraction": args.val_fraction,
        "strict": args.strict,
        "num_workers": args.num_workers,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }


def run_prep(prepare: Callable[[], dict], print_summary: Callable[[dict], None], wrote: str) -> int:
    """Run ``prepare``; print its summary and ``wrote`` (exit code 0), or a one-line error (exit code 1)."""
    try:
        summary = prepare()
    except (MMLightningError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(wrote)
    return 0


def format_skipped(summary: dict) -> str:
    """The ``skipped:`` line of a summary: counts by reason, or ``none``."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    return f"  skipped: {skipped}"


def print_item_summary(summary: dict, items: str, files: str = "file(s)") -> None:
    """A few lines on what a media preparation wrote: ``summary[items]`` per split and the skips."""
    print(f"Prepared {summary[items]} {items} from {summary['files']} {files} in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats[items]} {items}")
    print(format_skipped(summary))
