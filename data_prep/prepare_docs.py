"""Prepare PDFs for the long-context stage: litdata shards of page images interleaved with their text, train/val.

Usage::

    pip install 'mm_lightning[docs]'   # pypdfium2
    python data_prep/prepare_docs.py PDFS... --output data/my_docs [--dpi 72 --max-pages 32]

PDFS are ``.pdf`` files or folders of them; each PDF is one document. Pages are rendered at ``--dpi`` (scaled
down to ``--max-side``) with their text layer; see :mod:`mm_lightning.data.docs_prep`.
"""

from __future__ import annotations

import argparse
import sys

from mm_lightning.data.docs_prep import prepare_docs_shards
from mm_lightning.data.media_prep import PrepRun
from mm_lightning.errors import MMLightningError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_docs.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help=".pdf files or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (train/, val/, prep_summary.json)")
    parser.add_argument("--dpi", type=float, default=72, help="render resolution (72: a pixel per PDF point)")
    parser.add_argument("--max-pages", type=int, default=32, help="keep the first this many pages of a PDF")
    parser.add_argument("--max-side", type=int, default=896, help="scale pages down to this longer side")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of documents held out for val")
    parser.add_argument("--strict", action="store_true", help="fail at the first bad PDF instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help="rendering processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['documents']} documents from {summary['files']} PDF(s) in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['documents']} documents")
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    print(f"  skipped: {skipped}")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_docs_shards(
            args.inputs, args.output, dpi=args.dpi, max_pages=args.max_pages, max_side=args.max_side,
            run=PrepRun(val_fraction=args.val_fraction, strict=args.strict, num_workers=args.num_workers,
                        overwrite=args.overwrite, progress=not args.quiet),
        )  # fmt: skip
    except (MMLightningError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Wrote {args.output}/train/, val/ and prep_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
