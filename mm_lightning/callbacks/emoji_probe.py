"""Emoji-identity retrieval in validation: the ViT stage's check that it tells the emoji apart, not just colours.

At every validation (the one before training included, which gives the "before" figure), scores the stage's
``vit`` and ``coca`` on the probe images of :mod:`mm_lightning.eval.emoji_probe` (each demo emoji alone on each
chosen background, retrieval within one background) and logs recall@1 and @5 in both directions beside chance and
the colour-only baseline. The probe set is built once, with the datamodule's tokenizer, patch size, patch cap and
caption length. Every rank scores the whole probe (under FSDP2 the forwards are collective); the figures are the
same on all.

The same forward passes give TensorBoard its retrieval examples, on the global step like the scalars (rank zero
only, with a ``TensorBoardLogger``): ``val/probe_retrieval``, an image of a few probe images, spread over the
backgrounds and emoji, each beside its true caption and its top captions among those on its background, with their
cosine similarity; and ``val/probe_retrieval_samples``, the same as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.callbacks.tensorboard_media import (
    log_caption_grid,
    log_text_table,
    logged_step,
    split_name,
    tensorboard_writer,
)
from mm_lightning.errors import ConfigError
from mm_lightning.eval.emoji_probe import (
    ProbeSet,
    build_probe_set,
    emoji_probe_metrics,
    probe_backgrounds,
    probe_vocabulary,
    render_probe,
)
from mm_lightning.inference import evaluating

LOGGED = ("i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "chance_r@1", "chance_r@5", "colour_only_r@1")


class EmojiIdentityProbe(pl.Callback):
    """Log emoji-identity retrieval on probe images at each validation of the ViT stage.

    Args:
        backgrounds: palette colours to draw the probe on; or how many (the first of the sorted palette); ``None``
            for the whole palette (10 colours: 640 images).
        batch_size: probe pairs per forward pass (on a CPU, small packs are faster: the dense attention mask of a
            packed sequence grows with its square).
        examples: probe images shown with their retrieved captions in TensorBoard (0: none).
        top_k: retrieved captions shown per example.
    """

    def __init__(
        self, backgrounds: Sequence[str] | int | None = None, batch_size: int = 16, examples: int = 4, top_k: int = 3
    ) -> None:
        if batch_size < 1 or examples < 0 or top_k < 1:
            raise ConfigError(
                f"EmojiIdentityProbe needs batch_size >= 1, examples >= 0 and top_k >= 1, got {batch_size}, "
                f"{examples} and {top_k}"
            )
        self.backgrounds = probe_backgrounds(backgrounds)
        self.batch_size, self.examples, self.top_k = batch_size, examples, top_k
        self._probe: ProbeSet | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = [getattr(pl_module, name, None) for name in ("vit", "coca")]
        if any(module is None for module in modules):
            raise ConfigError("EmojiIdentityProbe needs a stage with `vit` and `coca` (the ViT CoCa stage)")
        probe, embeddings = self._probe_set(trainer), []

        def keep_embeddings(_: Any, __: Any, out: dict[str, Tensor]) -> None:  # not the caption logits: [B, L, V]
            embeddings.append((out["image_embed"].float().cpu(), out["text_embed"].float().cpu()))

        shows = self.examples > 0 and tensorboard_writer(trainer) is not None
        record = modules[1].register_forward_hook(keep_embeddings) if shows else None
        try:
            with evaluating(pl_module), trainer.precision_plugin.forward_context():
                metrics = emoji_probe_metrics(*modules, probe, self.batch_size)
        finally:
            if record is not None:
                record.remove()
        pl_module.report_validation({f"val/probe_{name}": metrics[name] for name in LOGGED}, "val/probe_i2t_r@1")
        if embeddings:  # from the probe's own forward passes, in its row order
            image_embed, text_embed = (torch.cat(parts) for parts in zip(*embeddings))
            self.log_retrieval(trainer, pl_module, probe, image_embed, text_embed)

    def log_retrieval(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, image_embed: Tensor,
                      text_embed: Tensor) -> None:  # fmt: skip
        """A few probe images beside their true and top retrieved captions (an image, and a table)."""
        rows = example_rows(len(probe), self.examples)
        retrieved = top_captions(probe, image_embed, text_embed, rows, self.top_k)
        sprites = probe_vocabulary()
        images = [render_probe(sprites[int(probe.emoji[row])], probe.backgrounds[int(probe.background[row])])
                  for row in rows]  # fmt: skip
        truths = [probe.captions[row] for row in rows]
        labels = [[_retrieved_label(probe, row, *hit) for hit in hits] for row, hits in zip(rows, retrieved)]
        columns = [(f"retrieved #{rank + 1}", ranked) for rank, ranked in enumerate(zip(*labels))]
        step, split = logged_step(pl_module), split_name(trainer)
        title = f"{type(pl_module).__name__}, step {step}: probe images and their top captions on their background"
        log_caption_grid(trainer, f"{split}/probe_retrieval", images, truths, columns, step, title)
        header = ("probe image's caption", *(label for label, _ in columns))
        log_text_table(trainer, f"{split}/probe_retrieval_samples", header,
                       [(truth, *ranked) for truth, ranked in zip(truths, labels)], step)  # fmt: skip

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


def example_rows(count: int, examples: int) -> list[int]:
    """``examples`` probe rows spread evenly from the first to the last (over backgrounds and emoji)."""
    shown = min(examples, count)
    return [round(index * (count - 1) / max(shown - 1, 1)) for index in range(shown)]


def top_captions(probe: ProbeSet, image_embed: Tensor, text_embed: Tensor, rows: list[int],
                 top_k: int) -> list[list[tuple[int, float]]]:  # fmt: skip
    """For each probe row in ``rows``, the ``top_k`` captions its image retrieves among those on its background.

    Returns:
        Per row, ``(caption row, cosine similarity)`` pairs, the best first.
    """
    similarity = F.normalize(image_embed[rows], dim=-1) @ F.normalize(text_embed, dim=-1).T  # [n, B]
    same_background = probe.background[rows][:, None] == probe.background[None, :]  # [n, B]
    k = min(top_k, int(same_background.sum(dim=1).min()))
    scores, indices = similarity.masked_fill(~same_background, float("-inf")).topk(k, dim=1)  # [n, k]
    return [list(zip(row_indices.tolist(), row_scores.tolist())) for row_indices, row_scores in zip(indices, scores)]


def _retrieved_label(probe: ProbeSet, row: int, hit: int, score: float) -> str:
    return f"{probe.captions[hit]} (cosine {score:.2f}{', the right one' if hit == row else ''})"
