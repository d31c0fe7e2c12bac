"""Native-resolution image patches, packed NaViT style (Dehghani et al. 2023; MoonViT in Kimi-VL).

Each image keeps its aspect ratio: it is resized to a whole number of patches per side (capped at
``max_patches`` per image), cut into row-major patches, and several images are concatenated into one
packed sequence. ``seq_ids`` marks which image each patch belongs to, so the shared attention backends
(``ops/attention.py``) keep images apart, and ``grid_hw`` gives each image's patch grid for the 2-D
positions. Pure torch: used by the data pipeline (dataloader workers) and the models alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_to_patch_grid(
    height: int,
    width: int,
    patch_size: int,
    max_patches: int,
    min_side_patches: int = 1,
    *,
    multiple: int = 1,
) -> tuple[int, int]:
    """The patch grid an image is resized to: aspect ratio kept, whole patches, at most ``max_patches``.

    The image is never scaled up beyond its own size rounded to patches; it is scaled down (uniformly)
    until ``grid_h * grid_w <= max_patches``.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        patch_size: patch side in pixels.
        max_patches: cap on ``grid_h * grid_w``.
        min_side_patches: smallest allowed grid side (very thin images are stretched to it).
        multiple: both sides are multiples of this (2 for a later 2x2 pixel shuffle).

    Returns:
        ``(grid_h, grid_w)`` in patches.

    Raises:
        ValueError: when even the smallest allowed grid exceeds ``max_patches``.
    """
    min_units = max(1, math.ceil(min_side_patches / multiple))
    max_units = max_patches // (multiple * multiple)
    if min_units * min_units > max_units:
        raise ValueError(
            f"max_patches={max_patches} cannot hold a grid with sides >= {min_side_patches} in multiples of {multiple}"
        )
    rows, cols = height / (patch_size * multiple), width / (patch_size * multiple)  # size in grid units
    scale = min(1.0, math.sqrt(max_units / (rows * cols)))
    grid_h, grid_w = max(min_units, round(rows * scale)), max(min_units, round(cols * scale))
    while grid_h * grid_w > max_units:  # rounding (or the minimum side) overshot: trim the more enlarged side
        if grid_w == min_units or (grid_h > min_units and grid_h / rows >= grid_w / cols):
            grid_h -= 1
        else:
            grid_w -= 1
    return grid_h * multiple, grid_w * multiple


def image_to_patches(
    image: Tensor, patch_size: int, max_patches: int, *, multiple: int = 1
) -> tuple[Tensor, tuple[int, int]]:
    """Resize an image to its patch grid and cut it into row-major patches.

    Args:
        image: ``[3, H, W]`` float image, already normalised.
        patch_size: patch side in pixels.
        max_patches: cap on patches for this image (see :func:`fit_to_patch_grid`).
        multiple: grid sides are multiples of this (see :func:`fit_to_patch_grid`).

    Returns:
        ``(patches, (grid_h, grid_w))``: patches ``[grid_h * grid_w, 3 * patch_size**2]``, each flattened
        channel-first (``[3, p, p]``, the order of a ``Conv2d`` patch-embedding weight).
    """
    channels, height, width = image.shape
    grid_h, grid_w = fit_to_patch_grid(height, width, patch_size, max_patches, multiple=multiple)
    size = (grid_h * patch_size, grid_w * patch_size)
    if (height, width) != size:
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    patches = image.reshape(channels, grid_h, patch_size, grid_w, patch_size)  # [C, h, p, w, p]
    patches = patches.permute(1, 3, 0, 2, 4)  # [h, w, C, p, p]
    return patches.reshape(grid_h * grid_w, channels * patch_size * patch_size), (grid_h, grid_w)


def pack_patches(patch_list: list[Tensor], grids: list[tuple[int, int]]) -> dict[str, Tensor]:
    """Concatenate several images' patches into one packed sequence.

    Args:
        patch_list: per image, ``[h_i * w_i, 3 * p * p]`` patches from :func:`image_to_patches`.
        grids: per image, its ``(h_i, w_i)`` patch grid.

    Returns:
        ``{"patches": [1, N, 3*p*p], "grid_hw": [n_images, 2] int64, "seq_ids": [1, N] int64}`` where
        ``N = sum(h_i * w_i)`` and ``seq_ids`` is the image index of every patch.
    """
    if len(patch_list) != len(grids) or not patch_list:
        raise ValueError(f"need one grid per image and at least one image, got {len(patch_list)} and {len(grids)}")
    for index, (patches, (grid_h, grid_w)) in enumerate(zip(patch_list, grids)):
        if patches.shape[0] != grid_h * grid_w:
            raise ValueError(f"image {index}: {patches.shape[0]} patches do not fill a {grid_h}x{grid_w} grid")
    grid_hw = torch.tensor(grids, dtype=torch.long).reshape(-1, 2)  # [n, 2]
    counts = grid_hw.prod(dim=1)  # [n]
    seq_ids = torch.repeat_interleave(torch.arange(len(grids)), counts)  # [N]
    return {"patches": torch.cat(patch_list)[None], "grid_hw": grid_hw, "seq_ids": seq_ids[None]}
