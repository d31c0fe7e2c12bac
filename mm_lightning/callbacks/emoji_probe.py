"""Emoji-identity retrieval in validation: the ViT stage's check that it tells the emoji apart, not just colours.

At every validation (the one before training included, which gives the "before" figure), scores the stage's
``vit`` and ``coca`` on the probe images of :mod:`mm_lightning.eval.emoji_probe` (each demo emoji alone on each
chosen background, retrieval within one background) and logs recall@1 and @5 in both directions beside chance and
the colour-only baseline. The probe set is built once, with the datamodule's tokenizer, patch size, patch cap and
caption length. Every rank scores the whole probe (under FSDP2 the forwards are collective); the figures are the
same on all.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from mm_lightning.errors import ConfigError
from mm_lightning.eval.emoji_probe import ProbeSet, build_probe_set, emoji_probe_metrics, probe_backgrounds
from mm_lightning.inference import evaluating

LOGGED = ("i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "chance_r@1", "chance_r@5", "colour_only_r@1")


class EmojiIdentityProbe(pl.Callback):
    """Log emoji-identity retrieval on probe images at each validation of the ViT stage.

    Args:
        backgrounds: palette colours to draw the probe on; or how many (the first of the sorted palette); ``None``
            for the whole palette (10 colours: 640 images).
        batch_size: probe pairs per forward pass (on a CPU, small packs are faster: the dense attention mask of a
            packed sequence grows with its square).
    """

    def __init__(self, backgrounds: Sequence[str] | int | None = None, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ConfigError(f"EmojiIdentityProbe batch_size must be at least 1, got {batch_size}")
        self.backgrounds = probe_backgrounds(backgrounds)
        self.batch_size = batch_size
        self._probe: ProbeSet | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = [getattr(pl_module, name, None) for name in ("vit", "coca")]
        if any(module is None for module in modules):
            raise ConfigError("EmojiIdentityProbe needs a stage with `vit` and `coca` (the ViT CoCa stage)")
        with evaluating(pl_module), trainer.precision_plugin.forward_context():
            metrics = emoji_probe_metrics(*modules, self._probe_set(trainer), self.batch_size)
        pl_module.report_validation({f"val/probe_{name}": metrics[name] for name in LOGGED}, "val/probe_i2t_r@1")

    def _probe_set(self, trainer: pl.Trainer) -> ProbeSet:
        if self._probe is None:
            data = trainer.datamodule
            fields = ("tokenizer", "patch_size", "max_patches", "max_caption_len")
            if data is None or any(getattr(data, name, None) is None for name in fields):
                raise ConfigError(f"EmojiIdentityProbe needs the image-text datamodule (with {', '.join(fields)})")
            self._probe = build_probe_set(
                data.tokenizer, data.patch_size, data.max_patches, data.max_caption_len, self.backgrounds
            )
        return self._probe
