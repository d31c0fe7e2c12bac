"""Does a checkpoint's VLM use its images? Caption loss with the right images and with another scene's.

Scores the demo's held-out scenes (``demo:emoji-scenes``, val split) with the checkpoint's LLM, ViT and
projector, once as they are and once with every caption paired with the next sample's image. A model that
reads its images does much worse on the mismatched pairs; one that only learned the caption language does
the same on both. Each checkpoint's scenes are cut into patches as its stage's training images were
(:func:`~mm_lightning.checkpoint.image_preprocessing`).

Usage::

    python benchmarks/image_use_check.py runs/align_tiny/checkpoints/last.ckpt [more.ckpt ...]
"""

from __future__ import annotations

import argparse

import torch

from mm_lightning.checkpoint import image_preprocessing, load_vlm
from mm_lightning.data import ImageTextDataModule
from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.losses import NextTokenLoss
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.vlm import VLM
from mm_lightning.tokenizer import IMAGE_ID


@torch.no_grad()
def caption_loss(vlm: VLM, batches: list[dict], mismatched: bool) -> float:
    """Mean caption loss per token; ``mismatched`` pairs each caption with the next sample's image."""
    loss_fn, total, count = NextTokenLoss(), 0.0, 0
    for batch in batches:
        if mismatched:
            order = torch.roll(torch.arange(len(batch["caption_ids"])), 1)
            batch = {**batch, "caption_ids": batch["caption_ids"][order], "caption_mask": batch["caption_mask"][order]}
        rows = caption_rows(batch, vlm.projector.num_tokens, IMAGE_ID)
        logits = vlm(rows["input_ids"], batch["patches"], batch["grid_hw"], batch["seq_ids"],
                     position_ids=rows["position_ids"], seq_ids=rows["seq_ids"])  # fmt: skip
        targets = int((rows["labels"] >= 0).sum())
        total += loss_fn(logits, rows["labels"])["loss"].item() * targets
        count += targets
    return total / count


def validation_batches(preprocessing: ImagePreprocessing, batches: int) -> list[dict]:
    """The first ``batches`` validation batches of 16 demo scenes, cut into patches as ``preprocessing`` says."""
    data = ImageTextDataModule("demo:emoji-scenes", batch_size=16, patch_size=preprocessing.patch_size,
                               max_patches=preprocessing.max_patches, max_caption_len=48, num_workers=0,
                               val_batches=batches)  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    return list(data.val_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", nargs="+", help="checkpoints with llm, vit and projector (alignment or joint)")
    parser.add_argument("--batches", type=int, default=8, help="validation batches of 16 scenes")
    args = parser.parse_args()
    scenes: dict[ImagePreprocessing, list[dict]] = {}  # checkpoints of one pipeline share one preprocessing
    for path in args.ckpt:
        preprocessing = image_preprocessing(path)
        if preprocessing not in scenes:
            scenes[preprocessing] = validation_batches(preprocessing, args.batches)
        batches, vlm = scenes[preprocessing], load_vlm(path)
        right, wrong = caption_loss(vlm, batches, False), caption_loss(vlm, batches, True)
        print(f"{path}: right images {right:.4f}  mismatched images {wrong:.4f}  (gap {wrong - right:+.4f} nats)")


if __name__ == "__main__":
    main()
