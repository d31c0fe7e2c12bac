"""Images and text in TensorBoard from the validation checks: grids of images with their captions, tables of text.

The checks (:class:`~mm_lightning.callbacks.CaptionChecks`, :class:`~mm_lightning.callbacks.EmojiIdentityProbe`)
pass what they computed anyway; this module draws it (:mod:`mm_lightning.eval.caption_grid`, the drawing of the
pipeline's ``captions.png``) and writes it with ``add_image``/``add_text`` through the stage's
``TensorBoardLogger``, on the pipeline-global step like the stage's scalars. Only rank zero writes, and only into a
TensorBoard logger: with another logger, or none, nothing is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from mm_lightning.eval.caption_grid import Columns, caption_grid_figure, figure_pixels


def tensorboard_writer(trainer: pl.Trainer) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoard logger on rank zero; ``None`` elsewhere (and for a
    stand-in trainer without loggers)."""
    loggers = getattr(trainer, "loggers", [])
    logger = next((logger for logger in loggers if isinstance(logger, TensorBoardLogger)), None)
    if logger is None or not trainer.is_global_zero:
        return None
    return logger.experiment


def logged_step(pl_module: pl.LightningModule) -> int:
    """The step the stage's scalars are on: its ``pipeline_step`` (the global step), else the trainer's step."""
    return int(getattr(pl_module, "pipeline_step", pl_module.global_step))


def split_name(trainer: pl.Trainer) -> str:
    """``test`` while testing, else ``val``: the prefix of the check's tags, as its scalars have."""
    return "test" if trainer.testing else "val"


def log_caption_grid(trainer: pl.Trainer, tag: str, images: Sequence[Image.Image], truths: Sequence[str],
                     columns: Columns, step: int, title: str = "") -> bool:  # fmt: skip
    """Draw the images beside their true captions and each column's, and add the grid as image ``tag``.

    Returns:
        Whether it was written (rank zero with a TensorBoard logger).
    """
    writer = tensorboard_writer(trainer)
    if writer is None or not images:
        return False
    pixels = figure_pixels(caption_grid_figure(images, truths, columns, title))  # [H, W, 3]
    writer.add_image(tag, pixels, step, dataformats="HWC")
    return True


def log_text_table(trainer: pl.Trainer, tag: str, header: Sequence[str], rows: Sequence[Sequence[str]],
                   step: int) -> bool:  # fmt: skip
    """Add ``rows`` under ``header`` as a Markdown table, text ``tag``; whether it was written."""
    writer = tensorboard_writer(trainer)
    if writer is None or not rows:
        return False
    lines = [header, ["---"] * len(header), *rows]
    writer.add_text(tag, "\n".join("| " + " | ".join(_cell(cell) for cell in line) + " |" for line in lines), step)
    return True


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(nothing)"
