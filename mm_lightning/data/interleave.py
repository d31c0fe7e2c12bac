"""Interleaved image-text samples: image spans in token streams, pixels to patches, packed image blobs.

An image (a video frame, a document page) sits in a token sequence as ``<|image_start|> <|image|> <|image_end|>``
(ids 3, 2, 4); the single ``<|image|>`` is expanded to the image's merged-token count later, by the collate. A
sample is a :class:`~mm_lightning.data.mixture.MixSample` (token ids, per-image patches and grid, an optional
loss mask, the source name); :func:`make_mix_sample` builds one, importing that class when it exists and
falling back to a local stand-in with the same fields otherwise (so this module does not depend on the mixture
code being present).

Several encoded images travel in one shard field as a *blob*: a little-endian count, then per image a length and
its bytes (:func:`pack_blobs` / :func:`unpack_blobs`), since litdata wants the same fields in every record.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from mm_lightning.data import tokenizer as tokenizer_lib
from mm_lightning.ops.patches import image_to_patches

IMAGE_ID, IMAGE_START_ID, IMAGE_END_ID = (
    tokenizer_lib.SPECIAL_TOKENS.index(t)
    for t in (tokenizer_lib.IMAGE_TOKEN, tokenizer_lib.IMAGE_START_TOKEN, tokenizer_lib.IMAGE_END_TOKEN)
)  # 2, 3, 4
IMAGE_SPAN = (IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID)
PIXEL_MEAN = PIXEL_STD = 0.5  # SigLIP, as image_text.decode_image normalises
_COUNT = struct.Struct("<I")


@dataclass
class _FallbackMixSample:
    """Stand-in with :class:`mm_lightning.data.mixture.MixSample`'s fields, used until that module exists."""

    token_ids: list[int]
    images: list[tuple[Tensor, tuple[int, int]]] = field(default_factory=list)
    loss_mask: list[bool] | None = None
    source: str = ""


def make_mix_sample(
    token_ids: list[int],
    images: list[tuple[Tensor, tuple[int, int]]],
    loss_mask: list[bool] | None = None,
    source: str = "",
) -> Any:
    """A ``MixSample`` (the mixture module's class when importable)."""
    try:
        from mm_lightning.data.mixture import MixSample
    except ImportError:
        MixSample = _FallbackMixSample
    return MixSample(token_ids=token_ids, images=images, loss_mask=loss_mask, source=source)


def pil_to_pixels(image: Image.Image) -> Tensor:
    """``[3, H, W]`` float pixels in [-1, 1]; transparency composited over white."""
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    image = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD  # [3, H, W]


def image_patches(image: Image.Image | bytes, patch_size: int, max_patches: int) -> tuple[Tensor, tuple[int, int]]:
    """``(patches [h*w, 3*p*p], (h, w))`` of a PIL image or encoded image bytes, at most ``max_patches``."""
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as opened:
            opened.load()
            return image_to_patches(pil_to_pixels(opened), patch_size, max_patches)
    return image_to_patches(pil_to_pixels(image), patch_size, max_patches)


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


def encode_image(image: Image.Image, fmt: str = "PNG") -> bytes:
    """PNG (or JPEG, quality 90) bytes of an image."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """The image scaled down (aspect ratio kept) so that its longer side is at most ``max_side``."""
    scale = max_side / max(image.size)
    if scale >= 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
