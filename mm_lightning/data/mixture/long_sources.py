"""Mixture sources over the long-context shards: video clips, interleaved documents and long text.

Each class follows the mixture's ``MixtureSource`` protocol (``name``, ``multimodal``, ``len()``,
``sample(k) -> MixSample``) over one split of a prepared folder, random access by index through litdata, so a
sample is a deterministic function of ``k``. The folders are those of ``data_prep/prepare_video.py`` (clips),
``data_prep/prepare_docs.py`` (documents) and the long-context demos (:mod:`mm_lightning.demo.long`);
:func:`open_long_source` opens either by path or by demo name. The litdata dataset is opened on first use, so a
source pickles cheaply into dataloader workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litdata import StreamingDataset

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo import demo_folder, is_demo_name
from mm_lightning.demo.long import long_demo
from mm_lightning.media.documents import build_interleaved_sample
from mm_lightning.media.interleave import MixSample, unpack_blobs
from mm_lightning.media.video import build_video_sample, sample_indices


class _ShardSource:
    """One split of a prepared folder, opened lazily; subclasses turn a record into a ``MixSample``."""

    multimodal = True

    def __init__(self, path: str | Path, tokenizer, split: str = "train", name: str | None = None):
        self.path, self.tokenizer, self.split = str(path), tokenizer, split
        self.name = name or Path(self.path).name
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = StreamingDataset(f"{self.path}/{self.split}")
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def sample(self, k: int) -> Any:
        """The ``MixSample`` of record ``k % len(self)``."""
        return self.to_sample(self.dataset[k % len(self)])

    def to_sample(self, record: dict) -> Any:
        raise NotImplementedError


class VideoSource(_ShardSource):
    """Clips with captions: every frame an image span, then the caption.

    Args:
        path: a folder with ``train/`` and ``val/`` of video records.
        tokenizer: the project tokenizer.
        split: ``"train"`` or ``"val"``.
        name: the source name (default: the folder name).
        max_frames: frames per clip; clips with more are subsampled uniformly.
        patch_size: patch side in pixels.
        max_patches_per_frame: cap on each frame's patches.
        prompt: text between frames and caption that takes no loss (e.g. ``"What happens in the video?"``).
    """

    def __init__(self, path: str | Path, tokenizer, split: str = "train", name: str | None = None,
                 max_frames: int = 64, patch_size: int = 14, max_patches_per_frame: int = 64,
                 prompt: str | None = None):  # fmt: skip
        super().__init__(path, tokenizer, split, name)
        self.max_frames, self.patch_size, self.max_patches_per_frame = max_frames, patch_size, max_patches_per_frame
        self.prompt = prompt

    def to_sample(self, record: dict) -> Any:
        frames = unpack_blobs(record["frames"])
        frames = [frames[i] for i in sample_indices(len(frames), 1.0, 1.0, self.max_frames)]
        return build_video_sample(frames, record["caption"], self.tokenizer, self.patch_size,
                                  self.max_patches_per_frame, self.prompt, self.name)  # fmt: skip


class InterleavedSource(_ShardSource):
    """Documents of images and text (PDF pages, scene documents), in reading order.

    Args:
        path: a folder with ``train/`` and ``val/`` of ``{"images", "texts"}`` records.
        tokenizer: the project tokenizer.
        split: ``"train"`` or ``"val"``.
        name: the source name (default: the folder name).
        max_images: images kept per document (the first ones, with the text around them).
        patch_size: patch side in pixels.
        max_patches_per_image: cap on each image's patches.
    """

    def __init__(self, path: str | Path, tokenizer, split: str = "train", name: str | None = None,
                 max_images: int = 32, patch_size: int = 14, max_patches_per_image: int = 256):  # fmt: skip
        super().__init__(path, tokenizer, split, name)
        self.max_images, self.patch_size, self.max_patches_per_image = max_images, patch_size, max_patches_per_image

    def to_sample(self, record: dict) -> Any:
        images, texts = unpack_blobs(record["images"])[: self.max_images], json.loads(record["texts"])
        texts = texts[: len(images) + 1]
        return build_interleaved_sample(texts, images, self.tokenizer, self.patch_size, self.max_patches_per_image,
                                        self.name)  # fmt: skip


class LongTextSource(_ShardSource):
    """Whole documents of ``{"text"}`` records as token ids + EOD, truncated to ``max_tokens`` when given."""

    multimodal = False

    def __init__(self, path: str | Path, tokenizer, split: str = "train", name: str | None = None,
                 max_tokens: int | None = None):  # fmt: skip
        super().__init__(path, tokenizer, split, name)
        self.max_tokens = max_tokens

    def to_sample(self, record: dict) -> Any:
        ids = tokenizer_lib.encode(self.tokenizer, record["text"])
        if self.max_tokens is not None:
            ids = ids[: self.max_tokens - 1]
        return MixSample([*ids, tokenizer_lib.eod_id(self.tokenizer)], [], None, self.name)


_DEMO_SOURCES = {"motion": VideoSource, "pages": InterleavedSource, "scene-docs": InterleavedSource,
                 "text": LongTextSource}  # fmt: skip


def open_long_source(data_path: str, tokenizer, split: str = "train", kind: str | None = None, **options: Any):
    """A source over a long-context demo (``"demo:motion-clips"``, ...) or a prepared folder.

    Args:
        data_path: a demo name (built on first use) or a folder written by ``prepare_video.py``/``prepare_docs.py``.
        tokenizer: the project tokenizer.
        split: ``"train"`` or ``"val"``.
        kind: for a folder, ``"video"``, ``"documents"`` or ``"text"`` (default: read from its records).
        options: passed to the source class (``max_frames``, ``max_patches_per_frame``, ...).
    """
    if is_demo_name(data_path):
        short, demo = long_demo(data_path)
        return _DEMO_SOURCES[demo.kind](demo_folder(data_path, "long"), tokenizer, split, name=short, **options)
    classes = {"video": VideoSource, "documents": InterleavedSource, "text": LongTextSource}
    if kind is None:
        fields = json.loads((Path(data_path) / split / "index.json").read_text())["config"]["data_spec"]
        kind = "video" if "frames" in fields else "documents" if "images" in fields else "text"
    return classes[kind](data_path, tokenizer, split, **options)
