"""Restated rows: training rows that say their opening span again, so that copying from the context pays.

A tiny LLM trained on the demo corpus learns its words, not to copy: the text rarely repeats itself within a row, and
at 1-2M tokens no head learns to look an earlier occurrence up (issue 12; README, "A copy warm-up, then restated
rows"). Restated rows do not form such a head either; they keep the one a copy warm-up formed
(:mod:`~mm_lightning.data.copy_rows`), which plain text erases within ~150 steps. Web text restates itself often (a
quote, a summary, a list used again), presumably part of what teaches large models to copy.

:func:`restate_opening` makes a share of training rows do it: a row ``t`` of ``T + 1`` tokens becomes
``t[:m] + t[:T + 1 - m]`` (its first ``m`` tokens, then the row again from its start), so the ``m`` tokens after the
cut are predictable only by finding where they were said and copying what followed, at a distance of ``m``. The rest
of the row is the corpus's own text: the word statistics a stage learns are the corpus's.

Which rows are restated, and their ``m``, follow from the row's own tokens and a seed (a hash, not a random stream),
so a resumed run, every rank and every worker restate the same rows the same way. Validation rows are never restated:
perplexity stays the corpus's.
"""

from __future__ import annotations

import random
import zlib

import torch
from torch import Tensor

from mm_lightning.errors import ConfigError

DEFAULT_SPAN = (32, 128)
"""Fewest and most tokens a restated row repeats, unless set (``repeat_span``)."""


def check_restating(share: float, span: tuple[int, int], seq_len: int) -> None:
    """Refuse a share outside [0, 1] or spans that do not fit twice in a row of ``seq_len`` tokens."""
    low, high = span
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"repeat_share must be in [0, 1], got {share}")
    if share and not 1 <= low <= high <= seq_len // 2:
        raise ConfigError(
            f"repeat_span must be (low, high) with 1 <= low <= high <= seq_len / 2 = {seq_len // 2}, got {span}"
        )


def restate_opening(block: Tensor, share: float, span: tuple[int, int], seed: int = 0) -> Tensor:
    """``block`` (``[T + 1]`` tokens) with its first ``m`` tokens said again after them, for a ``share`` of blocks.

    Args:
        block: one row of tokens, inputs and the label after them.
        share: probability that a block is restated.
        span: fewest and most tokens ``m`` restated (drawn uniformly).
        seed: changes which blocks are restated and their ``m``.

    Returns:
        The block unchanged, or ``block[:m] + block[:T + 1 - m]`` (same length and dtype).
    """
    if share <= 0.0:
        return block
    rng = random.Random(zlib.crc32(block.numpy().tobytes()) ^ (seed * 0x9E3779B1))
    if rng.random() >= share:
        return block
    cut = rng.randint(*span)
    return torch.cat([block[:cut], block[: block.numel() - cut]])
