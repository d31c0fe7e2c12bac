"""Images as the models see them: decoded to normalised pixels, cut into patches, encoded for shards.

Every path that turns an image into pixels (the image-text datamodule, interleaved documents, video frames,
``generate --image``, the passkey frames) goes through :func:`pil_to_pixels`, so training and inference
preprocess alike: RGB in [-1, 1] (mean = std = 0.5, as SigLIP), transparency composited over white.

Any Pillow mode decodes: 16-bit and 32-bit integer greys (``I;16``, ``I``: how Pillow reads 16-bit PNG, TIFF and PGM)
scale 0..65535 to 0..255, float greys (``F``) scale 0..1; values outside are clipped. Transparency of any kind
(an alpha channel, a palette's or a PNG's transparent colour) is composited over white, as for RGBA.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from mm_lightning.ops.patches import image_to_patches

PIXEL_MEAN = PIXEL_STD = 0.5  # SigLIP: pixels in [-1, 1]
BACKGROUND = (255, 255, 255, 255)  # what transparent pixels show: white
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_GREY_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
"""The value that is white in each high-depth grey mode."""
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image becomes ViT patches: patch side in pixels and the cap on patches per image."""

    patch_size: int
    max_patches: int


def pil_to_pixels(image: Image.Image) -> Tensor:
    """``[3, H, W]`` float pixels in [-1, 1] of an image of any mode; transparency composited over white."""
    if image.mode in _DEEP_GREY_WHITE:
        image = _deep_grey_to_8bit(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA"))
    image = image.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...: Pillow's conversions
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD  # [3, H, W]


def _deep_grey_to_8bit(image: Image.Image) -> Image.Image:
    """An ``L`` image (``LA`` when a transparent value is set) of a 16/32-bit integer or float grey image."""
    white = _DEEP_GREY_WHITE[image.mode]
    deep = image if image.mode == "F" else image.convert("I")
    dtype = torch.float32 if deep.mode == "F" else torch.int32
    values = torch.frombuffer(bytearray(deep.tobytes()), dtype=dtype).view(image.height, image.width)  # [H, W]
    grey = (values.float().nan_to_num() * (255 / white)).round().clamp(0, 255).to(torch.uint8)
    if "transparency" not in image.info:
        return Image.frombytes("L", image.size, grey.numpy().tobytes())
    alpha = (values != image.info["transparency"]).to(torch.uint8) * 255  # [H, W]
    return Image.frombytes("LA", image.size, torch.stack((grey, alpha), dim=-1).numpy().tobytes())


def png_compatible(image: Image.Image) -> Image.Image:
    """``image`` in a mode PNG can store, its colours as :func:`pil_to_pixels` reads them (e.g. CMYK as RGB)."""
    if image.mode in _PNG_MODES:
        return image
    if image.mode in _DEEP_GREY_WHITE:
        return _deep_grey_to_8bit(image)
    return image.convert("RGBA" if image.mode in _ALPHA_MODES else "RGB")


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
