"""Caption checks of a VLM on the emoji-scene demo: does it use its images, and do its captions say what is there?

Two checks on a fixed set of validation scenes (``generate_scene(config, "val", i)`` for ``i < n``, rendered as
the shards are), each with the value that says what it means:

- **image-use gap**: the caption loss (nats per caption token) with each caption paired with another scene's
  image minus with its own, the pairs batched and preprocessed as ``ImageTextDataModule`` does. A model that
  ignores its images scores 0. The mismatched image differs from the right one in background *and* emoji
  wherever the set allows (:func:`mismatch_order`), so the gap measures both.
- **caption accuracy** of greedy generation: the share of captions naming the scene's background colour, at least
  one of its emoji, all of them; beside the share a constant guess of the most common background (or emoji)
  would get on the same scenes (:func:`caption_chance`). Colours and emoji names are parsed with the demo's own
  vocabulary; the truth comes from the scene generator, never from parsing the true caption.

Every function returns plain floats; :class:`~mm_lightning.callbacks.CaptionChecks` runs them at each validation.
No Lightning here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from PIL import Image

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.data.image_text import ImageTextTransform, collate_image_text
from mm_lightning.demo import demo_folder, is_demo_name
from mm_lightning.demo.emoji_scenes import PALETTE, Scene, SceneConfig, emoji_name, generate_scene, render_scene
from mm_lightning.demo.emoji_scenes import vocabulary as scene_vocabulary
from mm_lightning.errors import ConfigError
from mm_lightning.generation.caption import caption_images
from mm_lightning.inference import evaluating
from mm_lightning.losses import NextTokenLoss
from mm_lightning.media.images import ImagePreprocessing, encode_image
from mm_lightning.models.vlm import VLM

BACKGROUND_PATTERN = re.compile(rf"(?<!\w)({'|'.join(sorted(PALETTE))})\s+background(?!\w)")


@dataclass(frozen=True)
class SceneSet:
    """The fixed validation scenes of the checks, their rendered images and the emoji names to parse."""

    scenes: tuple[Scene, ...]
    images: tuple[Image.Image, ...]
    emoji_names: tuple[str, ...]
    """The demo vocabulary's emoji names: what a generated caption can name."""

    def truth(self, index: int) -> tuple[str, frozenset[str]]:
        """Scene ``index``'s background colour and emoji names, from the generator."""
        scene = self.scenes[index]
        return scene.background, frozenset(emoji_name(sprite) for sprite in scene.sprites)


def scene_config(data_path: str) -> SceneConfig:
    """The scene generator's config of an emoji-scene corpus, as its ``prep_summary.json`` records it.

    Args:
        data_path: ``"demo:emoji-scenes"`` (built on first use) or a folder written by ``write_scene_shards``.
    """
    root = demo_folder(data_path, "image_text") if is_demo_name(data_path) else Path(data_path)
    summary_path = root / "prep_summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    if summary.get("source") != "emoji-scenes":
        raise ConfigError(f"{data_path} is not an emoji-scene corpus (no emoji-scenes prep_summary.json in {root})")
    return SceneConfig(**summary["config"])


def build_scene_set(config: SceneConfig, count: int) -> SceneSet:
    """Validation scenes ``0 .. count-1`` of ``config``, rendered exactly as the shards render them."""
    scenes = tuple(generate_scene(config, "val", index) for index in range(count))
    names = tuple(emoji_name(sprite) for sprite in scene_vocabulary(config.vocab_size, config.seed))
    return SceneSet(scenes, tuple(render_scene(scene) for scene in scenes), names)


# ---- image-use gap ----------------------------------------------------------------------------------------------


def mismatch_order(scenes: Sequence[Scene]) -> list[int]:
    """A derangement ``order``: caption ``i`` is shown image ``order[i]``, another scene's.

    Starts from the roll by one and swaps partners until every pair differs in background and shares no emoji,
    where the set allows it (a pair that cannot be fixed keeps a different scene, even if similar).
    """
    n = len(scenes)
    if n < 2:
        raise ValueError(f"a mismatch needs at least 2 scenes, got {n}")

    def unlike(i: int, j: int) -> bool:
        a, b = scenes[i], scenes[j]
        return i != j and a.background != b.background and not set(a.sprites) & set(b.sprites)

    order = [(i + 1) % n for i in range(n)]
    for i in range(n):
        if unlike(i, order[i]):
            continue
        for j in range(n):  # take j's image if j can take i's in exchange
            if unlike(i, order[j]) and unlike(j, order[i]):
                order[i], order[j] = order[j], order[i]
                break
    return order


def image_text_batches(images: Sequence[bytes], captions: Sequence[str], tokenizer, preprocessing: ImagePreprocessing,
                       batch_size: int = 16, max_caption_len: int = 48) -> list[dict]:  # fmt: skip
    """Batches of ``{"image": png, "caption": str}`` records made as ``ImageTextDataModule`` makes them."""
    transform = ImageTextTransform(tokenizer, preprocessing.patch_size, preprocessing.max_patches, max_caption_len)
    items = [transform({"image": image, "caption": caption}) for image, caption in zip(images, captions, strict=True)]
    return [collate_image_text(items[i : i + batch_size], max_caption_len, tokenizer_lib.PAD_ID)
            for i in range(0, len(items), batch_size)]  # fmt: skip


def caption_loss(vlm: VLM, batches: Sequence[dict]) -> float:
    """Mean next-token loss per caption token given the images (the alignment stage's rows and loss)."""
    loss_fn, total, count = NextTokenLoss(), 0.0, 0
    device = next(vlm.parameters()).device
    with evaluating(vlm):
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            rows = caption_rows(batch, vlm.projector.num_tokens, vlm.image_token_id)
            logits = vlm(rows["input_ids"], batch["patches"], batch["grid_hw"], batch["seq_ids"],
                         position_ids=rows["position_ids"], seq_ids=rows["seq_ids"])  # fmt: skip
            targets = int((rows["labels"] >= 0).sum())
            total += float(loss_fn(logits, rows["labels"])["loss"]) * targets
            count += targets
    return total / max(count, 1)


def image_use_gap(vlm: VLM, tokenizer, scene_set: SceneSet, preprocessing: ImagePreprocessing, pairs: int = 64,
                  batch_size: int = 16, max_caption_len: int = 48) -> dict[str, float]:  # fmt: skip
    """Caption loss of the first ``pairs`` scenes with their own images, with mismatched ones, and the gap.

    Returns:
        ``caption_loss_right``, ``caption_loss_mismatched`` and ``image_use_gap`` (their difference), in nats per
        caption token.
    """
    scenes = scene_set.scenes[:pairs]
    pngs = [encode_image(image) for image in scene_set.images[: len(scenes)]]
    captions = [scene.caption for scene in scenes]
    mismatched = [pngs[j] for j in mismatch_order(scenes)]
    right = caption_loss(vlm, image_text_batches(pngs, captions, tokenizer, preprocessing, batch_size, max_caption_len))
    wrong = caption_loss(vlm, image_text_batches(mismatched, captions, tokenizer, preprocessing, batch_size,
                                                 max_caption_len))  # fmt: skip
    return {"caption_loss_right": right, "caption_loss_mismatched": wrong, "image_use_gap": wrong - right}


# ---- caption accuracy -------------------------------------------------------------------------------------------


def named_background(caption: str) -> str | None:
    """The palette colour a caption gives as the background (its last ``"<colour> background"``), if any."""
    found = BACKGROUND_PATTERN.findall(caption.lower())
    return found[-1] if found else None


@cache
def _emoji_pattern(names: tuple[str, ...]) -> re.Pattern:
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))  # longest first
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def named_emoji(caption: str, names: Sequence[str]) -> set[str]:
    """The emoji names a caption names as whole phrases, the longest match winning ("cat face" is not "cat")."""
    return set(_emoji_pattern(tuple(names)).findall(caption.lower()))


def caption_accuracy(captions: Sequence[str], scene_set: SceneSet) -> dict[str, float]:
    """Shares of ``captions`` (one per scene, in order) naming the background, any of the emoji, all of them."""
    colour = emoji_any = emoji_all = 0
    for index, caption in enumerate(captions):
        background, emoji = scene_set.truth(index)
        named = named_emoji(caption, scene_set.emoji_names)
        colour += named_background(caption) == background
        emoji_any += bool(named & emoji)
        emoji_all += emoji <= named
    n = max(len(captions), 1)
    return {
        "caption_colour_acc": colour / n,
        "caption_emoji_any_acc": emoji_any / n,
        "caption_emoji_all_acc": emoji_all / n,
    }


def caption_chance(scene_set: SceneSet, count: int | None = None) -> dict[str, float]:
    """What a constant guess scores on the first ``count`` scenes: the most common background, the most common emoji.

    Returns:
        ``caption_colour_chance`` (share of scenes on the most common background) and ``caption_emoji_any_chance``
        (share of scenes holding the most common emoji).
    """
    truths = [scene_set.truth(i) for i in range(len(scene_set.scenes) if count is None else count)]
    backgrounds = Counter(background for background, _ in truths)
    emoji = Counter(name for _, names in truths for name in names)
    n = max(len(truths), 1)
    return {
        "caption_colour_chance": max(backgrounds.values(), default=0) / n,
        "caption_emoji_any_chance": max(emoji.values(), default=0) / n,
    }


def caption_checks(
    vlm: VLM,
    tokenizer,
    scene_set: SceneSet,
    preprocessing: ImagePreprocessing,
    scenes: int = 100,
    max_new_tokens: int = 40,
    stop_at_eod: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Greedy captions of the first ``scenes`` scenes, scored, with the chance values.

    Args:
        vlm: the model.
        tokenizer: the project tokenizer.
        scene_set: the fixed scenes.
        preprocessing: the patching the model trained with.
        scenes: how many scenes to caption.
        max_new_tokens: most tokens per caption.
        stop_at_eod: stop each caption at its end of document (False: always ``max_new_tokens`` forward passes, so
            that ranks sharing FSDP2 collectives run the same number).

    Returns:
        The accuracy and chance figures, and the generated captions.
    """
    with evaluating(vlm):
        captions = caption_images(vlm, tokenizer, scene_set.images[:scenes], preprocessing, max_new_tokens,
                                  stop_at_eod=stop_at_eod)  # fmt: skip
    return caption_accuracy(captions, scene_set) | caption_chance(scene_set, len(captions)), captions
