"""Prepare conversations for supervised fine-tuning: litdata shards of (messages, image bytes), train/val.

The same as ``mm-lightning prepare chat``. Usage::

    python data_prep/prepare_chat.py CONVERSATIONS.jsonl... --output data/my_chat [--tokenizer tokenizer.json]

Each line is one conversation in the common ``messages`` format (OpenAI-style content parts, or text with
``<image>`` placeholders and a top-level ``images`` list; ShareGPT's ``conversations`` too). The output folder is
what ``ChatDataModule(data_path=...)`` reads; see :mod:`mm_lightning.prep.chat`.
"""

from __future__ import annotations

import sys

from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare


def main(argv: list[str] | None = None) -> int:
    """Run ``mm-lightning prepare chat`` on ``argv``; its exit code (2 with one line on bad input)."""
    args = sys.argv[1:] if argv is None else argv
    return run_command("prepare_chat.py", lambda: prepare(["chat", *args], prog="prepare_chat.py"))


if __name__ == "__main__":
    sys.exit(main())
