"""LightningDataModules over litdata streams, and the data preparation they read.

``TextDataModule`` streams packed token batches for the text stage; ``text_prep`` writes its shards and
``tokenizer`` holds the byte-level BPE shared by all stages. ``TextDataModule`` is imported lazily, so the
data preparation scripts do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mm_lightning.data.text import TextDataModule

__all__ = ["TextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "TextDataModule":
        from mm_lightning.data.text import TextDataModule

        return TextDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
