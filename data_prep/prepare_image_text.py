"""Prepare image-caption data for the ViT and joint stages: litdata shards of (image bytes, caption), train/val.

The same as ``mm-lightning prepare image-text``. Usage::

    python data_prep/prepare_image_text.py INPUTS... --output data/my_pairs [--tokenizer data/text/tokenizer.json]

INPUTS are captions files (``.jsonl`` with ``{"image": relpath, "caption": ...}``, or ``.csv`` with columns
``image,caption``), webdataset ``.tar`` shards as img2dataset writes them, ``.parquet`` files with image bytes and
captions, or folders of any of these. The output folder is what ``ImageTextDataModule(data_path=...)`` reads;
see :mod:`mm_lightning.prep.image_text`.
"""

from __future__ import annotations

import sys

from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare


def main(argv: list[str] | None = None) -> int:
    """Run ``mm-lightning prepare image-text`` on ``argv``; its exit code (2 with one line on bad input)."""
    args = sys.argv[1:] if argv is None else argv
    return run_command("prepare_image_text.py", lambda: prepare(["image-text", *args], prog="prepare_image_text.py"))


if __name__ == "__main__":
    sys.exit(main())
