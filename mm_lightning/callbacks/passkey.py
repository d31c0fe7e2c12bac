"""Passkey retrieval in validation: the check that the model reads its whole context (stage 5, and stage 1).

At every validation (the one before training included, which gives the "before" figure), scores the LLM on
text passkey prompts at several lengths and, optionally, the VLM on long demo clips with one needle frame
(``mm_lightning.eval.passkey``), and logs ``val/passkey@<length>``, ``val/passkey_video@<frames>`` and their
chance levels (``val/passkey_chance``: guessing the 5-digit key; ``val/passkey_video_chance``: the 3-digit
number). For text it also logs where retrieval breaks: ``val/passkey_first_token@<length>`` and
``val/passkey_later_tokens@<length>``, the shares of the answers' first tokens and of their later ones that the
model's top guess gets right given the true ones before it (:func:`~mm_lightning.eval.passkey.passkey_scores`:
the look-up and the copy apart). It needs a stage with an ``llm`` (every stage, text pre-training too; stage 1 logs
it so that stage 5's change shows) and, for clips, a ``vlm``, and a datamodule with a ``tokenizer``. Every rank runs
the same prompts (under FSDP2 the forward passes are collective); the figures are the same on all.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from mm_lightning.errors import ConfigError
from mm_lightning.eval.passkey import (
    BATCH_TOKENS,
    DEFAULT_PROMPTS,
    DEFAULT_VIDEO_PROMPTS,
    VIDEO_PASSKEY_DIGITS,
    passkey_chance,
    passkey_metrics,
    passkey_scores,
    video_passkey_accuracy,
)


class PasskeyEvaluation(pl.Callback):
    """Log passkey accuracy at each validation.

    Args:
        lengths: text prompt lengths in tokens.
        frame_counts: long-video lengths in frames (needle frame variant; needs a stage with a ViT).
        prompts: text prompts per length, every one with its own passkey, their needles spread evenly over the
            depth; the same prompts at every validation.
        video_prompts: clips per frame count, their needle frames spread evenly.
        batch_tokens: most prompt tokens decoded together (bounds the memory of long prompts).
    """

    def __init__(self, lengths: Sequence[int] = (1024,), frame_counts: Sequence[int] = (),
                 prompts: int = DEFAULT_PROMPTS, video_prompts: int = DEFAULT_VIDEO_PROMPTS,
                 batch_tokens: int = BATCH_TOKENS) -> None:  # fmt: skip
        if not lengths and not frame_counts:
            raise ConfigError("PasskeyEvaluation needs lengths or frame_counts")
        if prompts < 1 or video_prompts < 1:
            raise ConfigError(f"PasskeyEvaluation needs at least one prompt, got {prompts} and {video_prompts}")
        self.lengths, self.frame_counts = list(lengths), list(frame_counts)
        self.prompts, self.video_prompts, self.batch_tokens = prompts, video_prompts, batch_tokens

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("PasskeyEvaluation needs a datamodule with a tokenizer")
        metrics = {}
        if self.lengths:
            scores = passkey_scores(pl_module.llm, tokenizer, self.lengths, self.prompts,
                                    batch_tokens=self.batch_tokens)  # fmt: skip
            metrics.update(passkey_metrics({n: s.accuracy for n, s in scores.items()}))
            metrics["val/passkey_chance"] = passkey_chance()
            metrics.update(passkey_metrics({n: s.first_token for n, s in scores.items()}, "val/passkey_first_token"))
            metrics.update(passkey_metrics({n: s.later_tokens for n, s in scores.items()}, "val/passkey_later_tokens"))
        if self.frame_counts:
            accuracy = video_passkey_accuracy(pl_module.vlm, tokenizer, self.frame_counts, self.video_prompts)
            chance = {"val/passkey_video_chance": passkey_chance(VIDEO_PASSKEY_DIGITS)}
            metrics.update(passkey_metrics(accuracy, prefix="val/passkey_video"), **chance)
        pl_module.report_validation(metrics, headline=next(iter(metrics)))
