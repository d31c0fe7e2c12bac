"""Prepare a text corpus for text pre-training: tokenizer + litdata token shards (train/val).

Usage::

    python data_prep/prepare_text.py CORPUS_DIR_OR_FILES... --output data/my_corpus [--tokenizer tokenizer.json]

The output folder is what ``TextDataModule(data_path=...)`` reads; see :mod:`mm_lightning.data.text_prep`.
"""

from __future__ import annotations

import argparse
import sys

from mm_lightning.data.text_prep import CHUNK_TOKENS, TextPrepError, prepare_text_shards


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_text.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help=".txt/.jsonl/.parquet files (.gz allowed) or folders of them")
    parser.add_argument("-o", "--output", required=True, help="output folder (tokenizer.json, train/, val/)")
    parser.add_argument("--tokenizer", default=None, help="an existing tokenizer.json (default: train a BPE)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of the trained tokenizer")
    parser.add_argument("--text-field", default="text", help="text key of .jsonl records / .parquet column")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of documents held out for val")
    parser.add_argument("--strict", action="store_true", help="fail at the first bad record instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help="tokenizing processes (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument(
        "--chunk-tokens", type=int, default=CHUNK_TOKENS, help=f"tokens per litdata chunk (default: {CHUNK_TOKENS})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['documents']} documents, {summary['tokens']} tokens in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['documents']} documents, {stats['tokens']} tokens, {stats['chunks']} chunk(s)")
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    print(f"  skipped: {skipped}")
    print(f"  tokenizer: {summary['tokenizer']['source']} (vocab {summary['tokenizer']['vocab_size']})")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; a bad corpus ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_text_shards(
            args.inputs,
            args.output,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            text_field=args.text_field,
            val_fraction=args.val_fraction,
            strict=args.strict,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
            chunk_tokens=args.chunk_tokens,
        )
    except (TextPrepError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    print(f"Wrote {args.output}/tokenizer.json, train/, val/ and prep_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
