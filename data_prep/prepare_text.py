"""Prepare a text corpus for text pre-training: tokenizer + litdata token shards (train/val).

Usage::

    python data_prep/prepare_text.py CORPUS_DIR_OR_FILES... --output data/my_corpus [--tokenizer tokenizer.json]

The output folder is what ``TextDataModule(data_path=...)`` reads; see :mod:`mm_lightning.data.text_prep`.
"""

from __future__ import annotations

import argparse
import sys

from mm_lightning.data.prep_cli import add_run_arguments, build_prep_parser, format_skipped, run_options, run_prep
from mm_lightning.data.text_prep import CHUNK_TOKENS, prepare_text_shards


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_text.py``."""
    parser = build_prep_parser(
        __doc__,
        ".txt/.jsonl/.parquet files (.gz allowed) or folders of them",
        "output folder (tokenizer.json, train/, val/)",
    )
    parser.add_argument("--tokenizer", default=None, help="an existing tokenizer.json (default: train a BPE)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of the trained tokenizer")
    parser.add_argument("--text-field", default="text", help="text key of .jsonl records / .parquet column")
    parser.add_argument(
        "--chunk-tokens", type=int, default=CHUNK_TOKENS, help=f"tokens per litdata chunk (default: {CHUNK_TOKENS})"
    )
    add_run_arguments(parser, "record", "documents", "tokenizing")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['documents']} documents, {summary['tokens']} tokens in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['documents']} documents, {stats['tokens']} tokens, {stats['chunks']} chunk(s)")
    print(format_skipped(summary))
    print(f"  tokenizer: {summary['tokenizer']['source']} (vocab {summary['tokenizer']['vocab_size']})")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; a bad corpus ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    return run_prep(
        lambda: prepare_text_shards(
            args.inputs, args.output, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
            text_field=args.text_field, chunk_tokens=args.chunk_tokens, **run_options(args),
        ),
        print_summary,
        f"Wrote {args.output}/tokenizer.json, train/, val/ and prep_summary.json",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
