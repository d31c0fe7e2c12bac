"""Prepare a text corpus for text pre-training: tokenizer + litdata token shards (train/val).

The same as ``mm-lightning prepare text``. Usage::

    python data_prep/prepare_text.py CORPUS_DIR_OR_FILES... --output data/my_corpus [--tokenizer tokenizer.json]

The output folder is what ``TextDataModule(data_path=...)`` reads; see :mod:`mm_lightning.prep.text`.
"""

from __future__ import annotations

import sys

from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare


def main(argv: list[str] | None = None) -> int:
    """Run ``mm-lightning prepare text`` on ``argv``; its exit code (2 with one line on bad input)."""
    args = sys.argv[1:] if argv is None else argv
    return run_command("prepare_text.py", lambda: prepare(["text", *args], prog="prepare_text.py"))


if __name__ == "__main__":
    sys.exit(main())
