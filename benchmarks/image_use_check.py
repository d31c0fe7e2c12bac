"""Does a checkpoint's VLM use its images? Caption loss with the right images and with another scene's.

Scores the demo's held-out scenes (``demo:emoji-scenes``, val split) with the checkpoint's LLM, ViT and
projector, once as they are and once with every caption paired with the next sample's image. A model that
reads its images does much worse on the mismatched pairs; one that only learned the caption language does
the same on both. Each checkpoint's scenes are cut into patches as its stage's training images were
(:func:`~mm_lightning.checkpoint.image_preprocessing`).

The gap is also split by what the caption tokens say: the emoji's names, the background colour, and the other
words (places, relations, articles). A model can use its images for the colour alone; then the emoji gap is ~0.

Usage::

    python benchmarks/image_use_check.py runs/align_tiny/checkpoints/last.ckpt [more.ckpt ...]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from mm_lightning.checkpoint import image_preprocessing, load_vlm
from mm_lightning.data import ImageTextDataModule
from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.demo import demo_tokenizer
from mm_lightning.demo.emoji_scenes import PALETTE, SceneConfig, emoji_name, vocabulary
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.vlm import VLM
from mm_lightning.tokenizer import IMAGE_ID, load_tokenizer

KINDS = ("all", "emoji", "colour", "other")


def token_kinds(tokenizer: Tokenizer, caption: str) -> list[str]:
    """Per token of ``caption`` (then its EOD, ``other``): ``emoji`` inside an emoji's name, ``colour`` inside the
    background's colour word, else ``other``."""
    spans = []
    for name in (emoji_name(sprite) for sprite in vocabulary(SceneConfig().vocab_size)):
        spans += [(m.start(), m.start() + len(name), "emoji") for m in _occurrences(caption, name)]
    for colour in PALETTE:
        spans += [(m.start(), m.start() + len(colour), "colour") for m in _occurrences(caption, f"{colour} background")]
    kinds = []
    for start, end in tokenizer.encode(caption, add_special_tokens=False).offsets:
        inside = [kind for first, last, kind in spans if start < last and end > first and caption[start:end].strip()]
        kinds.append(inside[0] if inside else "other")
    return [*kinds, "other"]


def _occurrences(text: str, word: str) -> Iterator[re.Match]:
    return re.finditer(rf"\b{re.escape(word)}\b", text)


@torch.no_grad()
def caption_loss(vlm: VLM, batches: list[dict], mismatched: bool, tokenizer: Tokenizer) -> dict[str, float]:
    """Mean caption loss per token, over all caption tokens and per kind (:func:`token_kinds`); ``mismatched``
    pairs each caption with the next sample's image."""
    totals = {kind: [0.0, 0] for kind in KINDS}
    for batch in batches:
        if mismatched:
            order = torch.roll(torch.arange(len(batch["caption_ids"])), 1)
            batch = {**batch, "caption_ids": batch["caption_ids"][order], "caption_mask": batch["caption_mask"][order],
                     "captions": [batch["captions"][i] for i in order]}  # fmt: skip
        rows = caption_rows(batch, vlm.projector.num_tokens, IMAGE_ID)
        logits = vlm(rows["input_ids"], batch["patches"], batch["grid_hw"], batch["seq_ids"],
                     position_ids=rows["position_ids"], seq_ids=rows["seq_ids"])  # fmt: skip
        labels = rows["labels"][0]
        losses = F.cross_entropy(logits[0].float(), labels.clamp(min=0), reduction="none")[labels >= 0]
        kinds = [kind for caption in batch["captions"] for kind in token_kinds(tokenizer, caption)]
        if len(kinds) != len(losses):
            raise ValueError(f"{len(kinds)} caption tokens by the tokenizer, {len(losses)} targets in the batch")
        for kind, loss in zip(kinds, losses.tolist(), strict=True):
            for key in ("all", kind):
                totals[key][0] += loss
                totals[key][1] += 1
    return {kind: total / count if count else float("nan") for kind, (total, count) in totals.items()}


def validation_batches(preprocessing: ImagePreprocessing, batches: int) -> list[dict]:
    """The first ``batches`` validation batches of 16 demo scenes, cut into patches as ``preprocessing`` says."""
    data = ImageTextDataModule("demo:emoji-scenes", batch_size=16, patch_size=preprocessing.patch_size,
                               max_patches=preprocessing.max_patches, max_caption_len=48, num_workers=0,
                               val_batches=batches)  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    return list(data.val_dataloader())


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", nargs="+", help="checkpoints with llm, vit and projector (alignment or joint)")
    parser.add_argument("--batches", type=int, default=8, help="validation batches of 16 scenes")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(demo_tokenizer("demo:emoji-scenes"))
    scenes: dict[ImagePreprocessing, list[dict]] = {}  # checkpoints of one pipeline share one preprocessing
    results = {}
    for path in args.ckpt:
        preprocessing = image_preprocessing(path)
        if preprocessing not in scenes:
            scenes[preprocessing] = validation_batches(preprocessing, args.batches)
        batches, vlm = scenes[preprocessing], load_vlm(path)
        right, wrong = caption_loss(vlm, batches, False, tokenizer), caption_loss(vlm, batches, True, tokenizer)
        results[str(path)] = {"right": right, "mismatched": wrong}
        print(f"{path}: right images {right['all']:.4f}  mismatched images {wrong['all']:.4f}  "
              f"(gap {wrong['all'] - right['all']:+.4f} nats)")  # fmt: skip
        for kind in KINDS[1:]:
            gap = wrong[kind] - right[kind]
            print(f"  {kind:<7} right {right[kind]:.3f}  mismatched {wrong[kind]:.3f}  gap {gap:+.3f}")
    return results


if __name__ == "__main__":
    main()
