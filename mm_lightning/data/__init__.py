"""The runtime data path: LightningDataModules that stream prepared litdata shards (or build a demo) into batches.

Data flows ``raw files -> mm_lightning.prep -> litdata shards -> these datamodules -> stages``:

- :class:`TextDataModule` (``text.py``): packed token rows for text pre-training, a share of them optionally
  restated (``restated_rows.py``) so that copying from the context pays;
- :class:`CopyRowsDataModule` (``copy_rows.py``): random spans said twice, the warm-up before text pre-training
  that forms a copying head;
- :class:`ImageTextDataModule` (``image_text.py``): native-resolution images packed NaViT style, with captions, for
  the ViT stages;
- :class:`MixtureDataModule` (``mixture_datamodule.py``): the joint stages' named sources mixed on a share
  schedule and packed into rows; its parts are in ``mixture/`` (``plan``: which source each sample comes from,
  ``sources``/``long_sources``: what a sample is, ``packing``: samples into rows);
- :class:`ChatDataModule` (``chat.py``): conversations for supervised fine-tuning in the chat template
  (:mod:`mm_lightning.chat`), packed into rows by the mixture's packing, with the val split's prompts and reference
  answers for exact match;
- :class:`SyntheticTextDataModule` (``synthetic.py``): deterministic random text for benchmarks and tests.

Under several ranks a streamed split gives every rank as many full batches (``rank_split.py``), so no rank waits
forever in a collective for one that has run out of batches.

Every path resolves through one :class:`~mm_lightning.data.location.DataLocation` (folder, URL or ``demo:``
name); the sample codecs shared with the offline preparation (images, video, documents) are in
:mod:`mm_lightning.media`.
"""

from mm_lightning.data.chat import ChatDataModule
from mm_lightning.data.copy_rows import CopyRowsDataModule
from mm_lightning.data.image_text import ImageTextDataModule
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.data.text import TextDataModule

__all__ = [
    "ChatDataModule",
    "CopyRowsDataModule",
    "ImageTextDataModule",
    "MixtureDataModule",
    "SyntheticTextDataModule",
    "TextDataModule",
]
