"""The copy check in validation: does the LLM copy from anywhere in its context? (every LLM stage can run it)

At every validation (the one before training included, which gives the "before" figure), scores the stage's LLM on
:func:`~mm_lightning.eval.copy_check.copy_probe_rows` at each length and logs ``val/copy@<length>`` (the share of a
repeated span's ids it gets right), ``val/copy_gain@<length>`` (nats the repeat saves over a shuffled span) and
``val/copy_chance``. Passkey accuracy says whether a whole key comes out; this says whether the copying under it
is there, and shows it form, fade or come back between stages while the passkey stays at 0. It needs a stage with an
``llm`` and a datamodule with a ``tokenizer``. One forward over ``rows`` rows a length: 0.19 s at 256 tokens and
0.88 s at 1,024 for the tiny LLM (8 rows) on a 2-core CPU. Every rank runs the same rows (under FSDP2 the forward
passes are collective); the figures are the same on all.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from mm_lightning.errors import ConfigError
from mm_lightning.eval.copy_check import (
    DEFAULT_ROWS,
    DEFAULT_SPAN,
    check_copy_probe,
    copy_chance,
    copy_metrics,
    copy_scores,
)


class CopyCheck(pl.Callback):
    """Log the copy check at each validation.

    Args:
        lengths: probe row lengths in tokens (the stage's row length, and longer ones for a context stage).
        rows: probe rows per length, their spans' depths spread evenly over the row.
        span: ids of the repeated span.
    """

    def __init__(self, lengths: Sequence[int] = (256,), rows: int = DEFAULT_ROWS, span: int = DEFAULT_SPAN) -> None:
        if not lengths:
            raise ConfigError("CopyCheck needs at least one length")
        for length in lengths:
            check_copy_probe(length, rows, span, "CopyCheck")
        self.lengths, self.rows, self.span = list(lengths), rows, span

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("CopyCheck needs a datamodule with a tokenizer")
        scores = copy_scores(pl_module.llm, tokenizer, self.lengths, self.rows, self.span)
        metrics = copy_metrics(scores, copy_chance(tokenizer))
        pl_module.report_validation(metrics, headline=next(iter(metrics)))
