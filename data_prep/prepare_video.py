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
from mm_lightning.data.prep_cli import add_run_arguments, build_prep_parser, print_item_summary, run_options, run_prep
from mm_lightning.data.video_prep import prepare_video_shards


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``prepare_video.py``."""
    parser = build_prep_parser(__doc__, "captions .jsonl/.csv files or folders")
    parser.add_argument("--video-field", default="video", help="video-path key/column of the captions files")
    parser.add_argument("--caption-field", default="caption", help="caption key/column of the captions files")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    parser.add_argument("--max-frames", type=int, default=64, help="cap on frames per clip (uniform when longer)")
    parser.add_argument("--max-side", type=int, default=448, help="scale frames down to this longer side")
    add_run_arguments(parser, "clip", "clips", "decoding")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; bad data ends with a one-line error and exit code 1, not a traceback."""
    args = build_parser().parse_args(argv)
    return run_prep(
        lambda: prepare_video_shards(
            args.inputs, args.output, video_field=args.video_field, caption_field=args.caption_field, fps=args.fps,
            max_frames=args.max_frames, max_side=args.max_side, run=PrepRun(**run_options(args)),
        ),
        lambda summary: print_item_summary(summary, "clips"),
        f"Wrote {args.output}/train/, val/ and prep_summary.json",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
