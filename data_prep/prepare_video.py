"""Prepare video-caption data for the long-context stage: litdata shards of sampled frames + caption, train/val.

The same as ``mm-lightning prepare video``. Usage::

    pip install 'mm_lightning[video]'   # PyAV
    python data_prep/prepare_video.py CAPTIONS... --output data/my_videos [--fps 1 --max-frames 64]

CAPTIONS are ``.jsonl`` files of ``{"video": relpath, "caption": ...}`` records or ``.csv`` files with columns
``video,caption`` (video paths relative to the captions file), or folders of them. Frames are sampled at ``--fps``
with at most ``--max-frames`` per clip (spread uniformly over longer clips); see
:mod:`mm_lightning.prep.video`.
"""

from __future__ import annotations

import sys

from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare


def main(argv: list[str] | None = None) -> int:
    """Run ``mm-lightning prepare video`` on ``argv``; its exit code (2 with one line on bad input)."""
    args = sys.argv[1:] if argv is None else argv
    return run_command("prepare_video.py", lambda: prepare(["video", *args], prog="prepare_video.py"))


if __name__ == "__main__":
    sys.exit(main())
