"""Passkey retrieval in validation: the long-context stage's check that the model reads its whole context.

At every validation (the one before training included, which gives the "before" figure), scores the LLM on
text passkey prompts at several lengths and, optionally, the VLM on long demo clips with one needle frame
(``mm_lightning.eval.passkey``), and logs ``val/passkey@<length>`` and ``val/passkey_video@<frames>``. Every
rank runs the same prompts (under FSDP2 the forward passes are collective); the figures are the same on all.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from mm_lightning.errors import ConfigError
from mm_lightning.eval.passkey import DEFAULT_DEPTHS, passkey_accuracy, passkey_metrics, video_passkey_accuracy


class PasskeyEvaluation(pl.Callback):
    """Log passkey accuracy at each validation.

    Args:
        lengths: text prompt lengths in tokens.
        frame_counts: long-video lengths in frames (needle frame variant; needs a stage with a ViT).
        depths: needle depths tried per length (0 = start, 1 = end).
        trials: prompts (different passkeys) per depth.
    """

    def __init__(self, lengths: Sequence[int] = (1024,), frame_counts: Sequence[int] = (),
                 depths: Sequence[float] = DEFAULT_DEPTHS, trials: int = 1) -> None:  # fmt: skip
        if not lengths and not frame_counts:
            raise ConfigError("PasskeyEvaluation needs lengths or frame_counts")
        self.lengths, self.frame_counts = list(lengths), list(frame_counts)
        self.depths, self.trials = list(depths), trials

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("PasskeyEvaluation needs a datamodule with a tokenizer")
        metrics = {}
        if self.lengths:
            accuracy = passkey_accuracy(pl_module.llm, tokenizer, self.lengths, self.depths, self.trials)
            metrics.update(passkey_metrics(accuracy))
        if self.frame_counts:
            accuracy = video_passkey_accuracy(pl_module.vlm, tokenizer, self.frame_counts, self.depths)
            metrics.update(passkey_metrics(accuracy, prefix="val/passkey_video"))
        pl_module.report_validation(metrics, headline=next(iter(metrics)))
