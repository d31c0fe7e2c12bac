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
from mm_lightning.data.prep_cli import add_run_arguments, build_prep_parser, print_item_summary, run_options, run_prep


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_docs.py``."""
    parser = build_prep_parser(__doc__, ".pdf files or folders")
    parser.add_argument("--dpi", type=float, default=72, help="render resolution (72: a pixel per PDF point)")
    parser.add_argument("--max-pages", type=int, default=32, help="keep the first this many pages of a PDF")
    parser.add_argument("--max-side", type=int, default=896, help="scale pages down to this longer side")
    add_run_arguments(parser, "PDF", "documents", "rendering")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    return run_prep(
        lambda: prepare_docs_shards(
            args.inputs, args.output, dpi=args.dpi, max_pages=args.max_pages, max_side=args.max_side,
            run=PrepRun(**run_options(args)),
        ),
        lambda summary: print_item_summary(summary, "documents", "PDF(s)"),
        f"Wrote {args.output}/train/, val/ and prep_summary.json",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
