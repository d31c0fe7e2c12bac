"""Prepare image-caption data for the ViT and joint stages: litdata shards of (image bytes, caption), train/val.

Usage::

    python data_prep/prepare_image_text.py INPUTS... --output data/my_pairs [--tokenizer data/text/tokenizer.json]

INPUTS are captions files (``.jsonl`` with ``{"image": relpath, "caption": ...}``, or ``.csv`` with columns
``image,caption``), webdataset ``.tar`` shards as img2dataset writes them, ``.parquet`` files with image bytes and
captions, or folders of any of these. The output folder is what ``ImageTextDataModule(data_path=...)`` reads;
see :mod:`mm_lightning.data.image_prep`.
"""

from __future__ import annotations

import argparse
import sys

from mm_lightning.data.image_prep import prepare_image_text_shards
from mm_lightning.data.prep_cli import add_run_arguments, build_prep_parser, format_skipped, run_options, run_prep


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_image_text.py``."""
    parser = build_prep_parser(__doc__, "captions .jsonl/.csv, webdataset .tar, .parquet files or folders")
    parser.add_argument("--image-field", default="image", help="image key of captions files / parquet bytes column")
    parser.add_argument("--caption-field", default="caption", help="caption key of captions files / parquet column")
    parser.add_argument("--max-side", type=int, default=512, help="scale down images whose longer side exceeds this")
    parser.add_argument("--tokenizer", default=None, help="the text stage's tokenizer.json, copied to the output")
    add_run_arguments(parser, "pair", "pairs", "decoding/writing")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['pairs']} image-caption pairs from {summary['files']} file(s) in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['pairs']} pairs ({stats['resized']} resized to --max-side {summary['max_side']})")
    print(format_skipped(summary))


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    return run_prep(
        lambda: prepare_image_text_shards(
            args.inputs, args.output, image_field=args.image_field, caption_field=args.caption_field,
            max_side=args.max_side, tokenizer=args.tokenizer, **run_options(args),
        ),
        print_summary,
        f"Wrote {args.output}/train/, val/ and prep_summary.json",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
