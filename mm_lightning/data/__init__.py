"""LightningDataModules over litdata streams, and the data preparation they read.

``TextDataModule`` streams packed token batches for the text stage; ``text_prep`` writes its shards and
``tokenizer`` holds the byte-level BPE shared by all stages. ``ImageTextDataModule`` streams packed
native-resolution images with tokenized captions for the ViT stages; ``image_prep`` writes its shards. The
joint stages' ``MixtureDataModule`` mixes text and multimodal sources on a share schedule (``mixture``). The
datamodules are imported lazily, so the data preparation scripts do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mm_lightning.data.image_text import ImageTextDataModule
    from mm_lightning.data.mixture_datamodule import MixtureDataModule
    from mm_lightning.data.text import TextDataModule

__all__ = ["ImageTextDataModule", "MixtureDataModule", "TextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "TextDataModule":
        from mm_lightning.data.text import TextDataModule

        return TextDataModule
    if name == "ImageTextDataModule":
        from mm_lightning.data.image_text import ImageTextDataModule

        return ImageTextDataModule
    if name == "MixtureDataModule":
        from mm_lightning.data.mixture_datamodule import MixtureDataModule

        return MixtureDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
