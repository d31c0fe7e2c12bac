"""Every Pillow mode decodes to the right colours: high-depth greys scaled, not clipped to white, and every kind of
transparency composited over white as RGBA is."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mm_lightning.media.images import decode_image, pil_to_pixels
from mm_lightning.prep.image_text import resize_to_max_side

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (128, 128, 128)


def two_pixels(mode: str, left, right, **info) -> Image.Image:
    """A 2x1 image of ``mode`` with the given left and right pixel values (and ``info``, e.g. transparency)."""
    image = Image.new(mode, (2, 1))
    image.putpixel((0, 0), left)
    image.putpixel((1, 0), right)
    image.info.update(info)
    return image


def palette_image(**info) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])  # 0: red, 1: blue
    image.putpixel((1, 0), 1)
    image.info.update(info)
    return image


# name -> (image, file format, expected RGB of the left and right pixels)
CASES = {
    "16-bit grey": (two_pixels("I;16", 32896, 65535), "PNG", [GREY, WHITE]),
    "16-bit big-endian grey": (two_pixels("I;16B", 0, 32896), "TIFF", [BLACK, GREY]),
    "16-bit grey, transparent value": (two_pixels("I;16", 32896, 1000, transparency=1000), "PNG", [GREY, WHITE]),
    "32-bit int grey": (two_pixels("I", 32896, 70000), "TIFF", [GREY, WHITE]),
    "negative int grey": (two_pixels("I", -7, 257 * 64), None, [BLACK, (64, 64, 64)]),
    "float grey": (two_pixels("F", 0.25, 1.5), "TIFF", [(64, 64, 64), WHITE]),
    "palette with a transparent entry": (palette_image(transparency=0), "PNG", [WHITE, (0, 0, 255)]),
    "palette, opaque": (palette_image(), "PNG", [(255, 0, 0), (0, 0, 255)]),
    "palette with alpha": (palette_image().convert("PA"), None, [(255, 0, 0), (0, 0, 255)]),
    "grey with alpha": (two_pixels("LA", (0, 0), (100, 255)), "PNG", [WHITE, (100, 100, 100)]),
    "half-transparent grey": (two_pixels("LA", (0, 128), (200, 255)), "PNG", [(127, 127, 127), (200, 200, 200)]),
    "grey": (two_pixels("L", 77, 0), "PNG", [(77, 77, 77), BLACK]),
    "grey, transparent value": (two_pixels("L", 77, 10, transparency=10), "PNG", [(77, 77, 77), WHITE]),
    "RGB, transparent colour": (
        two_pixels("RGB", (1, 2, 3), (9, 9, 9), transparency=(9, 9, 9)),
        "PNG",
        [(1, 2, 3), WHITE],
    ),  # fmt: skip
    "RGBA": (two_pixels("RGBA", (255, 0, 0, 0), (0, 255, 0, 255)), "PNG", [WHITE, (0, 255, 0)]),
    "CMYK": (two_pixels("CMYK", (255, 0, 0, 0), (0, 0, 0, 0)), "TIFF", [(0, 255, 255), WHITE]),
    "CMYK with black": (two_pixels("CMYK", (0, 255, 0, 128), (0, 0, 0, 255)), "JPEG", [(127, 0, 127), BLACK]),
    "1-bit": (two_pixels("1", 0, 1), "PNG", [BLACK, WHITE]),
}


def rgb(pixels: torch.Tensor) -> list[tuple[int, ...]]:
    """The 0-255 colours of a ``[3, 1, W]`` pixel tensor in [-1, 1], left to right."""
    values = ((pixels * 0.5 + 0.5) * 255).round().to(torch.int64)  # [3, 1, W]
    return [tuple(values[:, 0, x].tolist()) for x in range(values.shape[2])]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_decodes_to_its_colours(name: str) -> None:
    image, file_format, expected = CASES[name]
    assert rgb(pil_to_pixels(image)) == expected
    if file_format is None:
        return
    buffer = io.BytesIO()
    image.save(buffer, file_format, **({"quality": 100} if file_format == "JPEG" else {}))
    with Image.open(io.BytesIO(buffer.getvalue())) as reread:
        assert reread.mode == image.mode or file_format == "JPEG", (reread.mode, image.mode)
    decoded = rgb(decode_image(buffer.getvalue()))
    tolerance = 3 if file_format == "JPEG" else 0
    assert all(abs(a - b) <= tolerance for got, want in zip(decoded, expected) for a, b in zip(got, want)), decoded


@pytest.mark.parametrize("name", ["16-bit grey", "32-bit int grey", "float grey", "CMYK"])
@pytest.mark.parametrize("max_side", [16, 64])
def test_image_text_preparation_keeps_the_colours_of_modes_png_cannot_hold(name: str, max_side: int) -> None:
    """The preparation re-encodes TIFFs as PNG (scaled down or not); CMYK, I and F used to stop it."""
    image, _, expected = CASES[name]
    buffer = io.BytesIO()
    image.resize((64, 32), Image.Resampling.NEAREST).save(buffer, "TIFF")  # left half: the left colour
    stored = resize_to_max_side(buffer.getvalue(), max_side)
    assert Image.open(io.BytesIO(stored)).format == "PNG"
    assert Image.open(io.BytesIO(stored)).size == (max_side, max_side // 2)
    assert rgb(decode_image(stored)[:, :1, :1]) == [expected[0]]
