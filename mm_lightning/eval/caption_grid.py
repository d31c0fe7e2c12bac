"""Images beside their captions, as one matplotlib figure: what a model says (or retrieves) about each image.

Each image sits beside its true caption and the captions of any number of columns (checkpoints, or the ranks of
retrieved captions), two images to a row. ``captions.png`` of the pipeline report
(:mod:`mm_lightning.pipeline.scene_grid`) and the TensorBoard images of the validation checks
(:mod:`mm_lightning.callbacks.tensorboard_media`) are both drawn here. No Lightning, and no pyplot: the figure is
rendered with the Agg canvas, so it draws the same on a machine without a display.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

CELLS_PER_ROW = 2  # images side by side
FIGURE_WIDTH_IN, ROW_HEIGHT_IN, TITLE_HEIGHT_IN, DPI = 16.0, 2.0, 0.7, 100
FONT_SIZE, WRAP_CHARS, MAX_LINES = 8, 84, 2
CAPTION_COLOURS = ("black", "C0", "C3")  # the true caption, then each column's (the last colour repeats)

Columns = Sequence[tuple[str, Sequence[str]]]
"""``(label, captions)`` per column, one caption per image, e.g. ``("after stage 3 (align)", [...])``."""


def caption_grid_figure(images: Sequence[Image.Image], truths: Sequence[str], columns: Columns, title: str = "",
                        dpi: int = DPI) -> Figure:  # fmt: skip
    """Each image beside its true caption and each column's caption of it.

    Args:
        images: the images.
        truths: each image's true caption.
        columns: ``(label, captions)`` per column.
        title: the figure's title.
        dpi: dots per inch: the figure is ``FIGURE_WIDTH_IN`` x (``TITLE_HEIGHT_IN`` + ``ROW_HEIGHT_IN`` per row of
            ``CELLS_PER_ROW`` images) inches.

    Returns:
        The figure (not attached to pyplot).
    """
    rows = max(1, -(-len(images) // CELLS_PER_ROW))
    height = TITLE_HEIGHT_IN + ROW_HEIGHT_IN * rows
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=dpi)
    grid = fig.add_gridspec(rows, 2 * CELLS_PER_ROW, width_ratios=[1, 3] * CELLS_PER_ROW, wspace=0.05, hspace=0.15,
                            left=0.01, right=0.99, bottom=0.02, top=1 - TITLE_HEIGHT_IN / height)  # fmt: skip
    for index, (image, truth) in enumerate(zip(images, truths)):
        row, cell = divmod(index, CELLS_PER_ROW)
        image_ax, text_ax = fig.add_subplot(grid[row, 2 * cell]), fig.add_subplot(grid[row, 2 * cell + 1])
        image_ax.imshow(np.asarray(image.convert("RGB")))
        image_ax.set_axis_off()
        text_ax.set_axis_off()
        draw_captions(text_ax, [("true", truth), *((label, captions[index]) for label, captions in columns)])
    fig.suptitle(title, fontsize=14, y=1 - 0.15 / height, va="top")
    return fig


def draw_captions(ax: Any, captions: Sequence[tuple[str, str]]) -> None:
    """Each ``(label, caption)`` under the last from the top left of ``ax``: the label in bold, the caption wrapped
    to at most ``MAX_LINES`` lines."""
    line = FONT_SIZE * 1.25 / 72 / (ax.get_position().height * ax.figure.get_figheight())  # in axes fractions
    y = 1.0
    for number, (label, caption) in enumerate(captions):
        colour = CAPTION_COLOURS[min(number, len(CAPTION_COLOURS) - 1)]
        lines = textwrap.wrap(caption, WRAP_CHARS, max_lines=MAX_LINES, placeholder=" ...") or ["(nothing)"]
        style = {"transform": ax.transAxes, "va": "top", "fontsize": FONT_SIZE, "color": colour}
        ax.text(0, y, f"{label}:", fontweight="bold", **style)
        ax.text(0, y - line, "\n".join(lines), **style)
        y -= line * (len(lines) + 1.4)


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure rendered: ``[H, W, 3]`` uint8 RGB."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
