"""``mm-lightning prepare``: raw files into litdata shards, one subcommand per kind of data.

    mm-lightning prepare text CORPUS... --output data/my_corpus [--tokenizer tokenizer.json]
    mm-lightning prepare image-text PAIRS... --output data/my_pairs --tokenizer data/my_corpus/tokenizer.json
    mm-lightning prepare video CAPTIONS... --output data/my_videos [--fps 1 --max-frames 64]
    mm-lightning prepare docs PDFS... --output data/my_docs [--dpi 72 --max-pages 32]
    mm-lightning prepare chat CONVERSATIONS.jsonl... --output data/my_chat --tokenizer data/my_corpus/tokenizer.json

Every subcommand takes its inputs and ``--output``, its own options, then the same run options (``--val-fraction``,
``--strict``, ``--num-workers``, ``--overwrite``, ``--quiet``). Bad records are counted and skipped (``--strict``:
the first one stops the run); bad input as a whole is one line and exit code 2 (:func:`mm_lightning.errors.
run_command`). The ``data_prep/prepare_*.py`` scripts run the same subcommands. Nothing here imports Lightning.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mm_lightning.prep.chat import prepare_chat_shards
from mm_lightning.prep.docs import prepare_docs_shards
from mm_lightning.prep.image_text import prepare_image_text_shards
from mm_lightning.prep.media import PrepRun
from mm_lightning.prep.text import CHUNK_TOKENS, prepare_text_shards
from mm_lightning.prep.text_readers import DOC_CHARS, TXT_SPLITS
from mm_lightning.prep.video import prepare_video_shards


def _add_run_arguments(parser: argparse.ArgumentParser, item: str, items: str, work: str) -> None:
    """``--val-fraction``, ``--strict``, ``--num-workers``, ``--overwrite`` and ``--quiet``, worded for ``items``."""
    parser.add_argument("--val-fraction", type=float, default=0.02, help=f"share of {items} held out for val")
    parser.add_argument("--strict", action="store_true", help=f"fail at the first bad {item} instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help=f"{work} processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_options(args: argparse.Namespace) -> dict:
    return {
        "val_fraction": args.val_fraction,
        "strict": args.strict,
        "num_workers": args.num_workers,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }


def _subcommand(subparsers, name: str, help: str, inputs: str, output: str = "output folder (train/, val/,"
                " prep_summary.json)") -> argparse.ArgumentParser:  # fmt: skip
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.add_argument("inputs", nargs="+", help=inputs)
    parser.add_argument("-o", "--output", required=True, help=output)
    return parser


def build_parser(prog: str = "mm-lightning prepare") -> argparse.ArgumentParser:
    """The parser of every ``prepare`` subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="kind", required=True, metavar="{text,image-text,video,docs,chat}")

    text = _subcommand(subparsers, "text", "a text corpus: tokenizer + token shards for text pre-training",
                       ".txt/.jsonl/.parquet files (.gz allowed) or folders of them",
                       "output folder (tokenizer.json, train/, val/)")  # fmt: skip
    text.add_argument("--tokenizer", default=None, help="an existing tokenizer.json (default: train a BPE)")
    text.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of the trained tokenizer")
    text.add_argument("--text-field", default="text", help="text key of .jsonl records / .parquet column")
    text.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS, help="tokens per litdata chunk")
    text.add_argument("--txt-split", choices=TXT_SPLITS, default="blank-lines",
                      help="how a .txt becomes documents: paragraphs (between blank lines) grouped up to --doc-chars, "
                           "lines grouped up to --doc-chars (size), or the whole file (file)")  # fmt: skip
    text.add_argument("--doc-chars", type=int, default=DOC_CHARS, help="most characters of a .txt document")
    _add_run_arguments(text, "record", "documents", "tokenizing")

    pairs = _subcommand(subparsers, "image-text", "image-caption pairs for the ViT and joint stages",
                        "captions .jsonl/.csv, webdataset .tar, .parquet files or folders")  # fmt: skip
    pairs.add_argument("--image-field", default="image", help="image key of captions files / parquet bytes column")
    pairs.add_argument("--caption-field", default="caption", help="caption key of captions files / parquet column")
    pairs.add_argument("--max-side", type=int, default=512, help="scale down images whose longer side exceeds this")
    pairs.add_argument("--tokenizer", default=None, help="the text stage's tokenizer.json, copied to the output")
    _add_run_arguments(pairs, "pair", "pairs", "decoding/writing")

    video = _subcommand(subparsers, "video", "video-caption clips as sampled frames for the long-context stage",
                        "captions .jsonl/.csv files or folders")  # fmt: skip
    video.add_argument("--video-field", default="video", help="video-path key/column of the captions files")
    video.add_argument("--caption-field", default="caption", help="caption key/column of the captions files")
    video.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    video.add_argument("--max-frames", type=int, default=64, help="cap on frames per clip (uniform when longer)")
    video.add_argument("--max-side", type=int, default=448, help="scale frames down to this longer side")
    _add_run_arguments(video, "clip", "clips", "decoding")

    docs = _subcommand(subparsers, "docs", "PDFs as page images interleaved with their text, for long context",
                       ".pdf files or folders")  # fmt: skip
    docs.add_argument("--dpi", type=float, default=72, help="render resolution (72: a pixel per PDF point)")
    docs.add_argument("--max-pages", type=int, default=32, help="keep the first this many pages of a PDF")
    docs.add_argument("--max-side", type=int, default=896, help="scale pages down to this longer side")
    _add_run_arguments(docs, "PDF", "documents", "rendering")

    chat = _subcommand(subparsers, "chat", "conversations (messages JSONL, with images) for supervised fine-tuning",
                       ".jsonl files (one conversation a line) or folders of them")  # fmt: skip
    chat.add_argument("--max-side", type=int, default=512, help="scale down images whose longer side exceeds this")
    chat.add_argument("--tokenizer", default=None, help="the model's tokenizer.json, copied to the output")
    _add_run_arguments(chat, "conversation", "conversations", "image loading")
    return parser


def _prepare_text(args: argparse.Namespace) -> dict:
    return prepare_text_shards(
        args.inputs, args.output, tokenizer=args.tokenizer, vocab_size=args.vocab_size, text_field=args.text_field,
        chunk_tokens=args.chunk_tokens, txt_split=args.txt_split, doc_chars=args.doc_chars, **_run_options(args),
    )  # fmt: skip


def _prepare_pairs(args: argparse.Namespace) -> dict:
    return prepare_image_text_shards(
        args.inputs, args.output, image_field=args.image_field, caption_field=args.caption_field,
        max_side=args.max_side, tokenizer=args.tokenizer, **_run_options(args),
    )  # fmt: skip


def _prepare_video(args: argparse.Namespace) -> dict:
    return prepare_video_shards(
        args.inputs, args.output, video_field=args.video_field, caption_field=args.caption_field, fps=args.fps,
        max_frames=args.max_frames, max_side=args.max_side, run=PrepRun(**_run_options(args)),
    )  # fmt: skip


def _prepare_docs(args: argparse.Namespace) -> dict:
    return prepare_docs_shards(
        args.inputs, args.output, dpi=args.dpi, max_pages=args.max_pages, max_side=args.max_side,
        run=PrepRun(**_run_options(args)),
    )  # fmt: skip


def _prepare_chat(args: argparse.Namespace) -> dict:
    return prepare_chat_shards(args.inputs, args.output, max_side=args.max_side, tokenizer=args.tokenizer,
                               run=PrepRun(**_run_options(args)))  # fmt: skip


def _print_text(summary: dict) -> None:
    print(f"Prepared {summary['documents']} documents, {summary['tokens']} tokens in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['documents']} documents, {stats['tokens']} tokens, {stats['chunks']} chunk(s)")
    print(format_skipped(summary))
    print(f"  tokenizer: {summary['tokenizer']['source']} (vocab {summary['tokenizer']['vocab_size']})")


def _print_pairs(summary: dict) -> None:
    print(f"Prepared {summary['pairs']} image-caption pairs from {summary['files']} file(s) in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['pairs']} pairs ({stats['resized']} resized to --max-side {summary['max_side']})")
    print(format_skipped(summary))


def _print_items(items: str, files: str = "file(s)") -> Callable[[dict], None]:
    def print_summary(summary: dict) -> None:
        print(f"Prepared {summary[items]} {items} from {summary['files']} {files} in {summary['seconds']} s")
        for split, stats in summary["splits"].items():
            print(f"  {split:5s}: {stats[items]} {items}")
        print(format_skipped(summary))

    return print_summary


def format_skipped(summary: dict) -> str:
    """The ``skipped:`` line of a summary: counts by reason, or ``none``."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    return f"  skipped: {skipped}"


# kind -> (prepare, print its summary, what the output folder holds)
_KINDS = {
    "text": (_prepare_text, _print_text, "tokenizer.json, train/, val/ and prep_summary.json"),
    "image-text": (_prepare_pairs, _print_pairs, "train/, val/ and prep_summary.json"),
    "video": (_prepare_video, _print_items("clips"), "train/, val/ and prep_summary.json"),
    "docs": (_prepare_docs, _print_items("documents", "PDF(s)"), "train/, val/ and prep_summary.json"),
    "chat": (_prepare_chat, _print_items("conversations"), "train/, val/ and prep_summary.json"),
}


def main(argv: list[str], prog: str = "mm-lightning prepare") -> None:
    """Run ``prepare KIND ...``; errors propagate to :func:`~mm_lightning.errors.run_command`."""
    args = build_parser(prog).parse_args(argv)
    prepare, print_summary, written = _KINDS[args.kind]
    print_summary(prepare(args))
    print(f"Wrote {args.output}/{written}")
