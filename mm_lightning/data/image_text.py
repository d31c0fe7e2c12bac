"""Image-text data for the ViT stages: native-resolution images packed NaViT style, with tokenized captions.

The shards (``train/`` + ``val/`` of ``{"image": bytes, "caption": str}``, written by
``data_prep/prepare_image_text.py`` or generated for ``"demo:emoji-scenes"``) are streamed with litdata. Each
image is decoded at its own resolution and aspect ratio, normalised with mean = std = 0.5 (SigLIP) and cut into
patches by :func:`mm_lightning.ops.patches.image_to_patches`; a batch packs all its images into one sequence
(:func:`~mm_lightning.ops.patches.pack_patches`), so nothing is padded on the image side. Captions are tokenized
with the text stage's tokenizer (the same vocabulary the LLM later sees), start and end with ``<|endoftext|>``
(the start token lets the caption decoder predict the first word from the image, as a BOS does) and are
padded with ``<|pad|>`` to ``max_caption_len``.

As in :mod:`mm_lightning.data.text`, shuffling, resumption and the split across ranks and workers are litdata's,
a deterministic function of the seed; Lightning saves the train loader's state by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from litdata import StreamingDataset
from tokenizers import Tokenizer

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data.streaming import ShardDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.media.images import decode_image
from mm_lightning.ops.patches import image_to_patches, pack_patches


class ImageTextTransform:
    """Per record (in dataloader workers): patches and grid of the image, caption token ids (picklable)."""

    def __init__(self, tokenizer: Tokenizer, patch_size: int, max_patches: int, max_caption_len: int):
        self.tokenizer, self.patch_size, self.max_patches = tokenizer, patch_size, max_patches
        self.max_caption_len = max_caption_len

    def __call__(self, record: dict) -> dict:
        patches, grid = image_to_patches(decode_image(record["image"]), self.patch_size, self.max_patches)
        eod = tokenizer_lib.eod_id(self.tokenizer)
        ids = [eod, *tokenizer_lib.encode(self.tokenizer, record["caption"])[: self.max_caption_len - 2], eod]
        # EOD opens the caption (the decoder then predicts its first word) and closes it, even when truncated
        return {"patches": patches, "grid": grid, "caption_ids": ids, "caption": record["caption"]}


def collate_image_text(items: list[dict], max_caption_len: int, pad_id: int) -> dict:
    """Pack a batch's images into one patch sequence and pad its captions.

    Args:
        items: outputs of :class:`ImageTextTransform`.
        max_caption_len: caption length ``L`` (EOD included).
        pad_id: the ``<|pad|>`` token id.

    Returns:
        ``patches`` [1, N, 3p²], ``grid_hw`` [B, 2], ``seq_ids`` [1, N] (from ``pack_patches``), ``caption_ids``
        [B, L] int64, ``caption_mask`` [B, L] bool (True on caption tokens and EOD), ``captions`` (B strings).
    """
    batch = pack_patches([item["patches"] for item in items], [item["grid"] for item in items])
    caption_ids = torch.full((len(items), max_caption_len), pad_id, dtype=torch.long)  # [B, L]
    caption_mask = torch.zeros(len(items), max_caption_len, dtype=torch.bool)  # [B, L]
    for row, item in enumerate(items):
        caption_ids[row, : len(item["caption_ids"])] = torch.tensor(item["caption_ids"])
        caption_mask[row, : len(item["caption_ids"])] = True
    batch.update(caption_ids=caption_ids, caption_mask=caption_mask, captions=[item["caption"] for item in items])
    return batch


class ImageTextDataModule(ShardDataModule):
    """Packed native-resolution image batches with tokenized captions, streamed with litdata.

    ``test`` and ``predict`` read the ``val/`` split as validation does (there is no test split).

    Args:
        data_path: a prepared folder or URL holding ``train/`` and ``val/``; or ``"demo:emoji-scenes"``, generated
            into ``$MM_LIGHTNING_CACHE/demo`` on first use.
        batch_size: images per batch (per device), packed into one patch sequence.
        patch_size: patch side in pixels.
        max_patches: cap on patches per image (larger images are scaled down, aspect ratio kept).
        max_caption_len: caption tokens per row ``L``, both EODs included; longer captions are truncated.
        num_workers: dataloader worker processes.
        seed: the shuffling seed of the train split.
        val_batches: validate on the first this many batches of ``val`` only (all of it when ``None``).
        tokenizer_path: the text stage's ``tokenizer.json``; default ``data_path/tokenizer.json`` (for a demo,
            its text demo's tokenizer).
        cache_dir: where litdata caches chunks of a remote ``data_path`` (litdata's default when ``None``).
    """

    kind = "image_text"

    def __init__(
        self,
        data_path: str = "demo:emoji-scenes",
        batch_size: int = 16,
        patch_size: int = 14,
        max_patches: int = 256,
        max_caption_len: int = 48,
        num_workers: int = 0,
        seed: int = 42,
        val_batches: int | None = None,
        tokenizer_path: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(data_path, batch_size, num_workers, seed, val_batches, tokenizer_path, cache_dir)
        self.save_hyperparameters()
        self.patch_size, self.max_patches, self.max_caption_len = patch_size, max_patches, max_caption_len
        if max_caption_len < 3:
            raise ConfigError(f"max_caption_len must be at least 3 (EOD, a token, EOD), got {max_caption_len}")

    @property
    def pad_id(self) -> int:
        """The ``<|pad|>`` token id."""
        return tokenizer_lib.PAD_ID

    def open_split(self, url: str, train: bool, **kwargs: Any) -> StreamingDataset:
        transform = ImageTextTransform(self.tokenizer, self.patch_size, self.max_patches, self.max_caption_len)
        return StreamingDataset(url, transform=transform, **kwargs)

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        return partial(collate_image_text, max_caption_len=self.max_caption_len, pad_id=self.pad_id)

    def setup(self, stage: str | None = None) -> None:
        """Open the streams, refusing a val split with no pair or a train split smaller than a batch."""
        super().setup(stage)
        root = self.root
        self.check_split_sizes(
            lambda split, dataset, needed: f"The {split} split of {root} has {len(dataset)} pairs, fewer than {needed}"
        )
