"""What the model says about images: ``<run_dir>/captions.png``, validation scenes with their captions.

A grid of fixed validation scenes of ``demo:emoji-scenes`` (the first ``count`` of the val split, compositions
never seen in training), each beside its true caption and the greedy captions of the VLM after the alignment stage
(the first stage whose ``last.ckpt`` holds an LLM, a ViT and a projector) and after the last such stage. Every
checkpoint captions the scenes as ``generate --image`` would (:func:`~mm_lightning.generation.caption.caption_images`),
its images cut into patches as its stage trained (:func:`~mm_lightning.checkpoint.image_preprocessing`). A model
that ignores its images writes the same caption under every scene; one that reads them names what is in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from tokenizers import Tokenizer

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.checkpoint import checkpoint_meta, image_preprocessing, load_checkpoint, load_vlm
from mm_lightning.data.location import DataLocation
from mm_lightning.demo import demo_tokenizer
from mm_lightning.demo.corpora import DEMO_IMAGE_TEXTS
from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene
from mm_lightning.eval.caption_grid import Columns, caption_grid_figure
from mm_lightning.generation.caption import caption_images
from mm_lightning.pipeline.spec import get_at

Stage = dict[str, Any]

VLM_BACKBONES = {"llm", "vit", "projector"}


def validation_scenes(count: int) -> list[tuple[Image.Image, str]]:
    """The first ``count`` validation scenes of ``demo:emoji-scenes``: ``(image, true caption)`` each."""
    config = SceneConfig(vocab_size=DEMO_IMAGE_TEXTS["emoji-scenes"].vocab_size)
    scenes = [generate_scene(config, "val", index) for index in range(count)]
    return [(render_scene(scene), scene.caption) for scene in scenes]


def vlm_stages(manifest: dict) -> list[tuple[Stage, Path]]:
    """The finished stages whose final checkpoint holds a whole VLM, in run order, with that checkpoint."""
    found = []
    for stage in manifest["stages"]:
        path = Path(stage.get("checkpoint") or "")
        if stage.get("status") != "finished" or not path.is_file():
            continue
        backbones = checkpoint_meta(load_checkpoint(path), path).get("backbones", {})
        if VLM_BACKBONES <= set(backbones):
            found.append((stage, path))
    return found


def caption_tokenizer(stage: Stage) -> Tokenizer:
    """The tokenizer of a stage's captions: its data's ``tokenizer_path`` or ``data_path``'s own, else the demo's."""
    config_file = Path(stage.get("config") or "")
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    data = get_at(config, "data.init_args") or {}
    if data.get("tokenizer_path") or data.get("data_path"):
        return DataLocation(data.get("data_path", ""), "image_text", data.get("tokenizer_path")).tokenizer()
    return tokenizer_lib.load_tokenizer(demo_tokenizer())


def stage_captions(path: Path, tokenizer: Tokenizer, images: Sequence[Image.Image], max_new_tokens: int) -> list[str]:
    """Greedy captions of ``images`` by the VLM of checkpoint ``path``, its images patched as it trained."""
    vlm = load_vlm(path).to("cuda" if torch.cuda.is_available() else "cpu")
    return caption_images(vlm, tokenizer, images, image_preprocessing(path), max_new_tokens)


def draw_caption_grid(images: Sequence[Image.Image], truths: Sequence[str], columns: Columns, path: str | Path,
                      title: str = "") -> Path:  # fmt: skip
    """Draw each image beside its true caption and each column's caption of it
    (:func:`~mm_lightning.eval.caption_grid.caption_grid_figure`), and save the PNG at ``path``; returns ``path``."""
    path = Path(path)
    caption_grid_figure(images, truths, columns, title).savefig(path)
    return path


def _column_label(stage: Stage) -> str:
    return f"after stage {stage.get('index', '?')} ({stage.get('name')})"


def write_caption_grid(manifest: dict, out_dir: str | Path, count: int = 8, max_new_tokens: int = 48) -> Path | None:
    """Write ``captions.png``: ``count`` validation scenes captioned after alignment and after the last VLM stage.

    Args:
        manifest: the pipeline manifest; stages are read from their final checkpoints (``checkpoint``).
        out_dir: the folder to write into.
        count: how many scenes.
        max_new_tokens: the longest caption generated, in tokens.

    Returns:
        The path written, or ``None`` when no finished stage has a VLM checkpoint (nothing is drawn).
    """
    stages = vlm_stages(manifest)
    if not stages:
        return None
    shown = [stages[0], stages[-1]] if len(stages) > 1 else stages
    scenes = validation_scenes(count)
    images, truths = [image for image, _ in scenes], [caption for _, caption in scenes]
    tokenizer = caption_tokenizer(stages[0][0])
    columns = [(_column_label(stage), stage_captions(path, tokenizer, images, max_new_tokens)) for stage, path in shown]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Pipeline {manifest.get('pipeline', '')}: greedy captions of demo:emoji-scenes validation scenes"
    return draw_caption_grid(images, truths, columns, out_dir / "captions.png", title)
