"""Images as the models see them: decoded to normalised pixels, cut into patches, encoded for shards.

Every path that turns an image into pixels (the image-text datamodule, interleaved documents, video frames,
``generate --image``, the passkey frames) goes through :func:`pil_to_pixels`, so training and inference
preprocess alike: RGB in [-1, 1] (mean = std = 0.5, as SigLIP), transparency composited over white.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from mm_lightning.ops.patches import image_to_patches

PIXEL_MEAN = PIXEL_STD = 0.5  # SigLIP: pixels in [-1, 1]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image becomes ViT patches: patch side in pixels and the cap on patches per image."""

    patch_size: int
    max_patches: int


def pil_to_pixels(image: Image.Image) -> Tensor:
    """``[3, H, W]`` float pixels in [-1, 1]; transparency composited over white."""
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    image = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD  # [3, H, W]


def decode_image(data: bytes) -> Tensor:
    """``[3, H, W]`` float pixels in [-1, 1] of encoded image bytes (:func:`pil_to_pixels`)."""
    with Image.open(io.BytesIO(data)) as image:
        return pil_to_pixels(image)


def image_patches(image: Image.Image | bytes, patch_size: int, max_patches: int) -> tuple[Tensor, tuple[int, int]]:
    """``(patches [h*w, 3*p*p], (h, w))`` of a PIL image or encoded image bytes, at most ``max_patches``."""
    pixels = decode_image(image) if isinstance(image, bytes) else pil_to_pixels(image)
    return image_to_patches(pixels, patch_size, max_patches)


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
