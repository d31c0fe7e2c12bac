"""Caption checks in validation: does the VLM of the alignment and joint stages use its images, and say what is there?

At every validation (the one before training included, which gives the "before" figure), runs the checks of
:mod:`mm_lightning.eval.caption_checks` on a fixed set of emoji-scene validation scenes with the stage's VLM, the
datamodule's tokenizer and its image preprocessing (patch size, cap on patches), and logs the image-use gap
(``val/image_use_gap``, with ``val/caption_loss_right`` and ``val/caption_loss_mismatched``) and the accuracy of
greedy captions (``val/caption_{colour,emoji_any,emoji_all}_acc``) beside their chance values
(``val/caption_{colour,emoji_any}_chance``). As in :class:`~mm_lightning.callbacks.PasskeyEvaluation`, every rank
runs the same forward passes (under FSDP2 they are collective; with several ranks each caption takes all its
``max_new_tokens`` steps, so no rank stops early), and the figures are the same on all.

The captions it generated also go to TensorBoard, on the global step like the scalars (rank zero only, with a
``TensorBoardLogger``): ``val/caption_grid``, an image of the first ``grid_scenes`` scenes each beside its true
caption and the caption generated now, and ``val/caption_samples``, a table of the first ``samples`` pairs.
"""

from __future__ import annotations

import lightning.pytorch as pl

from mm_lightning.callbacks.tensorboard_media import log_caption_grid, log_text_table, logged_step, split_name
from mm_lightning.errors import ConfigError
from mm_lightning.eval.caption_checks import SceneSet, build_scene_set, caption_checks, image_use_gap, scene_config
from mm_lightning.inference import torch_threads
from mm_lightning.media.images import ImagePreprocessing


class CaptionChecks(pl.Callback):
    """Log the image-use gap and greedy-caption accuracy of the stage's VLM at each validation.

    Args:
        scenes: validation scenes captioned by greedy generation.
        gap_pairs: validation image-caption pairs the image-use gap is measured on.
        max_new_tokens: most tokens per generated caption.
        data_path: the emoji-scene corpus whose validation scenes are used (its generator config).
        samples: how many (true caption, generated caption) pairs to keep in :attr:`last_samples` and show in
            TensorBoard's text tab.
        cpu_threads: torch threads while the checks run on a CPU (``None``: the process's). Their many small decoding
            steps gain little from more threads and lose much when the cores are busy with other work (dataloader
            workers): on the tiny presets the checks took 6 s of CPU on one thread, 107 s on two sharing busy cores.
        grid_scenes: how many of the captioned scenes TensorBoard's image of each validation shows (0: no image).
    """

    def __init__(
        self,
        scenes: int = 100,
        gap_pairs: int = 64,
        max_new_tokens: int = 40,
        data_path: str = "demo:emoji-scenes",
        samples: int = 16,
        cpu_threads: int | None = 1,
        grid_scenes: int = 6,
    ) -> None:
        if scenes < 1 or gap_pairs < 2:
            raise ConfigError(f"CaptionChecks needs scenes >= 1 and gap_pairs >= 2, got {scenes} and {gap_pairs}")
        if grid_scenes < 0:
            raise ConfigError(f"CaptionChecks grid_scenes must be 0 (no image) or more, got {grid_scenes}")
        self.scenes, self.gap_pairs, self.max_new_tokens = scenes, gap_pairs, max_new_tokens
        self.data_path, self.samples, self.cpu_threads = data_path, samples, cpu_threads
        self.grid_scenes = grid_scenes
        self.last_samples: list[tuple[str, str]] = []
        """The first ``samples`` scenes of the last validation: (true caption, generated caption)."""
        self._scene_set: SceneSet | None = None

    @property
    def scene_set(self) -> SceneSet:
        """The fixed scenes (generated and rendered on first use)."""
        if self._scene_set is None:
            self._scene_set = build_scene_set(scene_config(self.data_path), max(self.scenes, self.gap_pairs))
        return self._scene_set

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        tokenizer = getattr(data, "tokenizer", None)
        if tokenizer is None or getattr(data, "patch_size", None) is None or getattr(data, "max_patches", None) is None:
            raise ConfigError("CaptionChecks needs a datamodule with a tokenizer, patch_size and max_patches")
        preprocessing = ImagePreprocessing(data.patch_size, data.max_patches)
        vlm = pl_module.vlm
        threads = self.cpu_threads if pl_module.device.type == "cpu" else None
        with trainer.precision_plugin.forward_context(), torch_threads(threads):
            metrics = image_use_gap(vlm, tokenizer, self.scene_set, preprocessing, self.gap_pairs,
                                    max_caption_len=getattr(data, "max_caption_len", 48))  # fmt: skip
            accuracy, captions = caption_checks(vlm, tokenizer, self.scene_set, preprocessing, self.scenes,
                                                self.max_new_tokens, stop_at_eod=trainer.world_size == 1)  # fmt: skip
        metrics.update(accuracy)
        truths = [scene.caption for scene in self.scene_set.scenes]
        self.last_samples = list(zip(truths, captions))[: self.samples]
        pl_module.report_validation({f"val/{name}": value for name, value in metrics.items()},
                                    headline="val/image_use_gap")  # fmt: skip
        self.log_captions(trainer, pl_module, truths, captions)

    def log_captions(self, trainer: pl.Trainer, pl_module: pl.LightningModule, truths: list[str],
                     captions: list[str]) -> None:  # fmt: skip
        """The first scenes beside their true and generated captions (an image), and :attr:`last_samples` (text)."""
        step, split, shown = logged_step(pl_module), split_name(trainer), min(self.grid_scenes, len(captions))
        title = f"{type(pl_module).__name__}, global step {step}: greedy captions of validation scenes"
        log_caption_grid(trainer, f"{split}/caption_grid", self.scene_set.images[:shown], truths[:shown],
                         [("generated now", captions[:shown])], step, title)  # fmt: skip
        log_text_table(trainer, f"{split}/caption_samples", ("true caption", "generated now"), self.last_samples, step)
