"""Prepare video-caption data for the long-context stage: litdata shards of sampled frames + caption, train/val.

Usage::

    pip install 'mm_lightning[video]'   # PyAV
    python data_prep/prepare_video.py CAPTIONS... --output data/my_videos [--fps 1 --max-frames 64]

CAPTIONS are ``.jsonl`` files of ``{"video": relpath, "caption": ...}`` records or ``.csv`` files with columns
``video,caption`` (video paths relative to the captions file), or folders of them. Frames are sampled at ``--fps``
with at most ``--max-frames`` per clip (spread uniformly over longer clips); see
:mod:`mm_lightning.data.video_prep`.
"""

from __future__ import annotations

import argparse
import sys

from mm_lightning.data.media_prep import PrepRun
from mm_lightning.data.video_prep import prepare_video_shards
from mm_lightning.errors import MMLightningError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_video.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="captions .jsonl/.csv files or folders")
    parser.add_argument("-o", "--output", required=True, help="output folder (train/, val/, prep_summary.json)")
    parser.add_argument("--video-field", default="video", help="video-path key/column of the captions files")
    parser.add_argument("--caption-field", default="caption", help="caption key/column of the captions files")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    parser.add_argument("--max-frames", type=int, default=64, help="cap on frames per clip (uniform when longer)")
    parser.add_argument("--max-side", type=int, default=448, help="scale frames down to this longer side")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of clips held out for val")
    parser.add_argument("--strict", action="store_true", help="fail at the first bad clip instead of skipping")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared data already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def print_summary(summary: dict) -> None:
    """A few lines on what was written."""
    print(f"Prepared {summary['clips']} clips from {summary['files']} file(s) in {summary['seconds']} s")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s}: {stats['clips']} clips")
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    print(f"  skipped: {skipped}")


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_video_shards(
            args.inputs, args.output, video_field=args.video_field, caption_field=args.caption_field,
            fps=args.fps, max_frames=args.max_frames, max_side=args.max_side,
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
