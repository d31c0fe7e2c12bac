"""Prepare PDFs for the long-context stage: litdata shards of page images interleaved with their text, train/val.

The same as ``mm-lightning prepare docs``. Usage::

    pip install 'mm_lightning[docs]'   # pypdfium2
    python data_prep/prepare_docs.py PDFS... --output data/my_docs [--dpi 72 --max-pages 32]

PDFS are ``.pdf`` files or folders of them; each PDF is one document. Pages are rendered at ``--dpi`` (scaled
down to ``--max-side``) with their text layer; see :mod:`mm_lightning.prep.docs`.
"""

from __future__ import annotations

import sys

from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare


def main(argv: list[str] | None = None) -> int:
    """Run ``mm-lightning prepare docs`` on ``argv``; its exit code (2 with one line on bad input)."""
    args = sys.argv[1:] if argv is None else argv
    return run_command("prepare_docs.py", lambda: prepare(["docs", *args], prog="prepare_docs.py"))


if __name__ == "__main__":
    sys.exit(main())
