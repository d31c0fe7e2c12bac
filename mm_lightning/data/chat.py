"""Conversations for supervised fine-tuning, packed into rows exactly as the joint stages' mixture batches.

The shards (``train/`` + ``val/`` of ``{"messages", "images", "source"}``, written by ``mm-lightning prepare chat`` or
generated for ``"demo:emoji-chat"``) are streamed with litdata as :class:`~mm_lightning.data.streaming.
ShardDataModule` streams every prepared dataset. Each conversation is tokenized with the chat template
(:mod:`mm_lightning.chat`: loss on the assistant answers and the EOD ending each, nothing else) and its images cut
into patches, giving one :class:`~mm_lightning.media.interleave.MixSample` that stays one attention sequence; a
batch's conversations are packed first-fit into rows by the mixture's own
:func:`~mm_lightning.data.mixture.packing.pack_samples`. A batch therefore has the keys and layout of
:class:`~mm_lightning.data.mixture_datamodule.MixtureBatches` (``JointStage.next_token_loss`` takes it as it is):

- ``input_ids``, ``labels``, ``seq_ids``, ``position_ids``: ``[R, L]`` int64 (labels ``IGNORE_INDEX`` except on
  answer tokens and their EOD; one ``seq_id`` per conversation, padding a sequence of its own);
- ``patches`` ``[1, N, 3p²]``, ``grid_hw`` ``[n_images, 2]``, ``patch_seq_ids`` ``[1, N]`` (``None`` without
  images); each image a span ``<|image_start|>``, ``ceil(h/m) * ceil(w/m)`` ``<|image|>``, ``<|image_end|>``;
- ``sample_tokens``, ``sample_truncated``, ``sample_index`` (the conversation's index in its split),
  ``sample_multimodal`` (it has images) and ``sample_source`` (0: one source), each ``[S]``.

For exact-match evaluation, :meth:`ChatDataModule.val_conversations` gives every assistant turn of the val split as a
:class:`ChatPrompt`: the prompt ids (conversation so far + the assistant marker, one ``<|image|>`` per image, to be
expanded with :func:`~mm_lightning.models.vlm.expand_image_placeholders`), the prompt's images as patches and grids,
the reference answer and what it tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
from litdata import StreamingDataset
from tokenizers import Tokenizer
from torch import Tensor

from mm_lightning.chat import (
    Message,
    assistant_turns,
    check_images,
    encode_conversation,
    messages_from_json,
    prompt_ids,
)
from mm_lightning.data.mixture.packing import pack_samples
from mm_lightning.data.streaming import ShardDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.media.images import image_patches
from mm_lightning.media.interleave import MixSample, unpack_blobs

Image = tuple[Tensor, tuple[int, int]]  # patches [h * w, 3 * p * p] and the grid (h, w)


class ChatPrompt(NamedTuple):
    """One assistant turn to generate and compare: what :meth:`ChatDataModule.val_conversations` lists."""

    prompt_ids: list[int]
    """The conversation before the answer and the assistant marker (:func:`mm_lightning.chat.prompt_ids`)."""
    images: list[Image]
    """The prompt's images in placeholder order: patches ``[h * w, 3 * p * p]`` and grid ``(h, w)``."""
    answer: str
    """The reference answer (compare with :func:`mm_lightning.chat.is_exact_match`)."""
    tag: str
    """What the answer tests (the demo's question kind, e.g. ``background``); empty in prepared data."""


def read_conversation(record: dict) -> tuple[list[Message], list[bytes]]:
    """The messages and encoded images of a shard record (checking that they agree)."""
    messages = messages_from_json(json.loads(record["messages"]))
    images = unpack_blobs(record["images"])
    check_images(messages, len(images))
    return messages, images


class ChatTransform:
    """Per record (in dataloader workers): the conversation as a one-sequence :class:`MixSample` (picklable)."""

    def __init__(self, tokenizer: Tokenizer, patch_size: int, max_patches: int):
        self.tokenizer, self.patch_size, self.max_patches = tokenizer, patch_size, max_patches

    def images(self, blobs: list[bytes]) -> list[Image]:
        """Patches and grids of encoded images, preprocessed as training does."""
        return [image_patches(blob, self.patch_size, self.max_patches) for blob in blobs]

    def __call__(self, record: dict) -> MixSample:
        messages, blobs = read_conversation(record)
        ids, targets = encode_conversation(self.tokenizer, messages)
        return MixSample(token_ids=ids, images=self.images(blobs), loss_mask=targets, source=record["source"],
                         eod_ends_document=False)  # fmt: skip


class ChatStream(StreamingDataset):
    """A split of conversations whose items are ``(sample, its index in the split)``."""

    def __getitem__(self, index: Any) -> tuple[Any, int]:
        return super().__getitem__(index), int(getattr(index, "index", index))


def collate_chat(items: list[tuple[MixSample, int]], seq_len: int, merge_factor: int,
                 rows_per_batch: int | None) -> dict[str, Tensor | None]:  # fmt: skip
    """Pack a batch's conversations into rows (:func:`~mm_lightning.data.mixture.packing.pack_samples`), with the
    per-sample keys of the mixture batches."""
    samples = [sample for sample, _ in items]
    labels = [f"conversation {index} ({sample.source})" for sample, index in items]
    batch = pack_samples(samples, seq_len, merge_factor, rows_per_batch, labels)
    batch["sample_index"] = torch.tensor([index for _, index in items], dtype=torch.long)
    batch["sample_multimodal"] = torch.tensor([bool(sample.images) for sample in samples], dtype=torch.bool)
    batch["sample_source"] = torch.zeros(len(samples), dtype=torch.long)
    return batch


class ChatDataModule(ShardDataModule):
    """Packed conversation batches with the loss on the assistant's answers, streamed with litdata.

    Args:
        data_path: a prepared folder or URL holding ``train/`` and ``val/``; or ``"demo:emoji-chat"``, generated
            into ``$MM_LIGHTNING_CACHE/demo`` on first use.
        batch_size: conversations per batch (per device), packed into as many rows as they need.
        seq_len: positions per packed row ``L``; a longer conversation loses its end (never part of an image).
        rows_per_batch: fix the rows per batch (padding rows added; a batch needing more raises); ``None``: vary.
        patch_size: patch side in pixels.
        max_patches: cap on patches per image (larger images are scaled down, aspect ratio kept).
        merge_factor: the projector's pixel-shuffle side (an ``h x w`` grid becomes ``ceil(h/m) * ceil(w/m)`` tokens).
        num_workers: dataloader worker processes.
        seed: the shuffling seed of the train split.
        val_batches: validate on the first this many batches of ``val`` only (all of it when ``None``).
        tokenizer_path: the model's ``tokenizer.json``; default ``data_path/tokenizer.json`` (for a demo, the text
            demo's tokenizer).
        cache_dir: where litdata caches chunks of a remote ``data_path`` (litdata's default when ``None``).
    """

    kind = "chat"
    val_groups = ("chat",)
    """The one validation loader's name (a stage logs ``val/chat_loss``)."""

    def __init__(
        self,
        data_path: str = "demo:emoji-chat",
        batch_size: int = 16,
        seq_len: int = 256,
        rows_per_batch: int | None = None,
        patch_size: int = 14,
        max_patches: int = 256,
        merge_factor: int = 2,
        num_workers: int = 0,
        seed: int = 42,
        val_batches: int | None = None,
        tokenizer_path: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(data_path, batch_size, num_workers, seed, val_batches, tokenizer_path, cache_dir)
        self.save_hyperparameters()
        for name, value, low in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                                 ("merge_factor", merge_factor, 1)):  # fmt: skip
            if value < low:
                raise ConfigError(f"{name}={value} must be at least {low}")
        self.seq_len, self.rows_per_batch, self.merge_factor = seq_len, rows_per_batch, merge_factor
        self.patch_size, self.max_patches = patch_size, max_patches

    def transform(self) -> ChatTransform:
        """Record -> :class:`MixSample`, with this datamodule's tokenizer and patching."""
        return ChatTransform(self.tokenizer, self.patch_size, self.max_patches)

    def open_split(self, url: str, train: bool, **kwargs: Any) -> StreamingDataset:
        return ChatStream(url, transform=self.transform(), **kwargs)

    def collate_fn(self) -> Callable[[list[tuple[MixSample, int]]], dict]:
        return partial(collate_chat, seq_len=self.seq_len, merge_factor=self.merge_factor,
                       rows_per_batch=self.rows_per_batch)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Open the streams, refusing a val split with no conversation or a train split smaller than a batch."""
        super().setup(stage)
        root = self.root
        self.check_split_sizes(
            lambda split, data, needed: f"The {split} split of {root} has {len(data)} conversations, not {needed}"
        )

    def val_conversations(self, limit: int | None = None) -> list[ChatPrompt]:
        """Every assistant turn of the first ``limit`` val conversations (all when ``None``), in order.

        Each is a :class:`ChatPrompt`: the prompt is the conversation up to that turn with the earlier *reference*
        answers, so the turns of a conversation are scored independently. The same list on every rank (split it
        across ranks as needed); reading it decodes the images, so build it once.
        """
        self.location.check()
        dataset = StreamingDataset(self.location.split("val"), shuffle=False, **self.location.stream_options())
        transform = self.transform()
        prompts = []
        for index in range(len(dataset) if limit is None else min(limit, len(dataset))):
            messages, blobs = read_conversation(dataset[index])
            images = transform.images(blobs)
            for history, answer in assistant_turns(messages):
                shown = sum(len(turn.images) for turn in history)
                prompts.append(ChatPrompt(prompt_ids(self.tokenizer, history), images[:shown], answer.text.strip(),
                                          answer.tag))  # fmt: skip
        return prompts
