"""Interleaved image-text samples: image spans in token streams, and packed image blobs.

An image (a video frame, a document page) sits in a token sequence as ``<|image_start|> <|image|> <|image_end|>``
(:data:`~mm_lightning.tokenizer.IMAGE_SPAN`); the single ``<|image|>`` is expanded to the image's merged-token
count later, by the packing. A sample of the joint stages is a :class:`MixSample` (token ids, per-image patches
and grid, an optional loss mask, the source name), built by the mixture's sources and by the long-input codecs.

Several encoded images travel in one shard field as a *blob*: a little-endian count, then per image a length and
its bytes (:func:`pack_blobs` / :func:`unpack_blobs`), since litdata wants the same fields in every record.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.tokenizer import IMAGE_SPAN

_COUNT = struct.Struct("<I")


@dataclass
class MixSample:
    """One sample of a mixture, before packing."""

    token_ids: list[int]
    """Text; each image appears as ONE ``<|image|>`` id, expanded to its merged token count by the collate."""
    images: list[tuple[torch.Tensor, tuple[int, int]]] = field(default_factory=list)
    """Per image, in placeholder order: patches ``[h * w, 3 * p * p]`` float and the grid ``(h, w)``."""
    loss_mask: list[bool] | None = None
    """Per token id, False = no loss on predicting it (prompts, image markers); ``None`` = loss on all."""
    source: str = ""
    """The name of the source it came from."""
    eod_ends_document: bool = True
    """Whether an EOD inside the sample ends a document (attention and positions restart after it, as between the
    documents of a text block); False keeps the sample one sequence: a conversation, whose every assistant turn ends
    with EOD (:mod:`mm_lightning.chat`)."""


def interleave(tokenizer, texts: Sequence[str], n_images: int, eod: bool = True) -> list[int]:
    """Token ids of ``texts[0], image 0, texts[1], image 1, ..., texts[n]`` (then EOD when ``eod``).

    ``texts`` has ``n_images + 1`` entries; empty ones add no tokens.
    """
    if len(texts) != n_images + 1:
        raise ValueError(f"need {n_images + 1} text segments around {n_images} images, got {len(texts)}")
    ids: list[int] = []
    for index, text in enumerate(texts):
        if text:
            ids += tokenizer_lib.encode(tokenizer, text)
        if index < n_images:
            ids += IMAGE_SPAN
    if eod:
        ids.append(tokenizer_lib.eod_id(tokenizer))
    return ids


def pack_blobs(blobs: Sequence[bytes]) -> bytes:
    """Several byte strings as one: a count, then each length and its bytes."""
    parts = [_COUNT.pack(len(blobs))]
    for blob in blobs:
        parts += [_COUNT.pack(len(blob)), blob]
    return b"".join(parts)


def unpack_blobs(data: bytes) -> list[bytes]:
    """The byte strings of :func:`pack_blobs`.

    Raises:
        ValueError: when ``data`` is not a complete blob.
    """
    view, offset = memoryview(data), _COUNT.size
    if len(data) < offset:
        raise ValueError("truncated blob")
    (count,) = _COUNT.unpack_from(view, 0)
    blobs = []
    for _ in range(count):
        if offset + _COUNT.size > len(data):
            raise ValueError("truncated blob")
        (length,) = _COUNT.unpack_from(view, offset)
        offset += _COUNT.size
        if offset + length > len(data):
            raise ValueError("truncated blob")
        blobs.append(bytes(view[offset : offset + length]))
        offset += length
    return blobs
