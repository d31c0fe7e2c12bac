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

from mm_lightning.data.image_prep import ImagePrepError, prepare_image_text_shards


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_image_text.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="captions .jsonl/.csv, webdataset .tar, .parquet files or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (train/, val/, prep_summary.json)")
    parser.add_argument("--image-field", default="image", help="image key of captions files / parquet bytes column")
    parser.add_argument("--caption-field", default="caption", help="caption key of captions files / parquet column")
    parser.add_argument("--max-side", type=int, default=512, help="scale down images whose longer side exceeds this")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of pairs held out for val")
    parser.add_argument("--tokenizer", default=None, help="the text stage's tokenizer.json, copied to the output")
    parser.add_argument("--strict", action="store_true", help="fail at the first bad pair instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding/writing processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['pairs']} image-caption pairs from {summary['files']} file(s) in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['pairs']} pairs ({stats['resized']} resized to --max-side {summary['max_side']})")
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    print(f"  skipped: {skipped}")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_image_text_shards(
            args.inputs,
            args.output,
            image_field=args.image_field,
            caption_field=args.caption_field,
            max_side=args.max_side,
            val_fraction=args.val_fraction,
            tokenizer=args.tokenizer,
            strict=args.strict,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ImagePrepError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Wrote {args.output}/train/, val/ and prep_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
