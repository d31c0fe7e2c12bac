"""How many steps does the tiny ViT need to tell the 64 demo emoji apart? The emoji-identity probe against steps.

Trains the ``tiny`` ViT and CoCa heads from scratch, outside Lightning and the pipeline, on emoji scenes rendered on
the fly, and scores the emoji-identity probe (:mod:`mm_lightning.eval.emoji_probe`, three backgrounds) every
``--every`` steps. Two ways to make the task easier than the stage's data, to see whether the data is what holds the
ViT back:

- ``--single 0.5``: half the scenes are one large emoji (40-60% of the shorter side) at a named place;
- ``--group 8``: the scenes of a batch share their background in groups of 8 (hard negatives: colour alone cannot
  tell them apart).

``--image-pool max --text-pool mean`` switch the CoCa heads' contrastive readouts (``CoCaConfig``), as the demo's ViT
stage does. ``--supervised`` instead trains a 64-way classifier on the ViT's pooled features (``--pool mean|max``; one
42-px emoji at a random place of a 126-px canvas, cross-entropy) and prints its accuracy on the probe images: an upper
bound on how fast this ViT learns the identities at all. ``--geometry cells`` puts the emoji on the 14-px grid the
demo scenes use (``SceneConfig.cell``), ``free`` anywhere, its side varied by 20%.

Usage::

    python benchmarks/vit_identity_budget.py --steps 800 --every 100 --single 0.5 --group 8
    python benchmarks/vit_identity_budget.py --supervised --steps 150 --lr 3e-3 --pool max --geometry cells
    python benchmarks/vit_identity_budget.py --steps 360 --every 120 --image-pool max --text-pool mean
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data.image_text import ImageTextTransform, collate_image_text
from mm_lightning.demo import demo_tokenizer
from mm_lightning.demo import emoji_scenes as scenes
from mm_lightning.eval.emoji_probe import build_probe_set, emoji_probe_metrics
from mm_lightning.inference import evaluating
from mm_lightning.losses import CoCaLoss
from mm_lightning.media.images import encode_image, image_patches
from mm_lightning.models.registry import build_backbone
from mm_lightning.models.vit import split_grids
from mm_lightning.ops.patches import pack_patches

COLOURS = sorted(scenes.PALETTE)


def single_emoji_scene(rng: random.Random, vocab: tuple[int, ...]) -> scenes.Scene:
    """One large emoji at one of the nine named places, captioned in the scenes' words."""
    sprite, place = rng.choice(vocab), rng.choice(list(scenes.PLACES))
    width, height = rng.randrange(64, 193, 8), rng.randrange(64, 193, 8)
    size = int(min(width, height) * rng.uniform(0.4, 0.6))
    x, y = int(place[1] * (width - size) / 2), int(place[0] * (height - size) / 2)
    background = rng.choice(COLOURS)
    name, where = scenes.article(scenes.emoji_name(sprite)), scenes.PLACES[place]
    caption = f"{name} {where} on {scenes.article(background)} background"
    return scenes.Scene(width, height, background, (sprite,), ((x, y, size),), "", caption)


def classifier_image(rng: random.Random, sprite: int, geometry: str) -> scenes.Scene:
    """One emoji alone on a 9-cell canvas: 3 cells at a cell corner (``cells``), or 34-50 px anywhere (``free``)."""
    cell, canvas = scenes.SceneConfig.cell, 9 * scenes.SceneConfig.cell
    if geometry == "cells":
        size, x, y = 3 * cell, rng.randrange(7) * cell, rng.randrange(7) * cell
    else:
        size = int(3 * cell * rng.uniform(0.8, 1.2))
        x, y = rng.randrange(canvas - size), rng.randrange(canvas - size)
    return scenes.Scene(canvas, canvas, rng.choice(COLOURS), (sprite,), ((x, y, size),), "", "")


def with_background(scene: scenes.Scene, background: str) -> scenes.Scene:
    caption = scene.caption.rsplit(" on ", 1)[0] + f" on {scenes.article(background)} background"
    return scenes.Scene(scene.width, scene.height, background, scene.sprites, scene.boxes, scene.composition, caption)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--single", type=float, default=0.0, help="share of single large-emoji scenes")
    parser.add_argument("--group", type=int, default=0, help="scenes per shared background in a batch (0: none)")
    parser.add_argument("--every", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--supervised", action="store_true", help="a 64-way classifier instead of the CoCa loss")
    parser.add_argument("--pool", choices=("mean", "max"), default="mean", help="pooling of the classifier")
    parser.add_argument("--geometry", choices=("cells", "free"), default="cells", help="the classifier's emoji")
    parser.add_argument("--image-pool", choices=("attentional", "max"), default="attentional",
                        help="the CoCa heads' contrastive image readout")  # fmt: skip
    parser.add_argument("--text-pool", choices=("last", "mean"), default="last",
                        help="the CoCa heads' contrastive text readout")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(1)
    config = scenes.SceneConfig()
    vocab = scenes.vocabulary(config.vocab_size, config.seed)
    tokenizer = tokenizer_lib.load_tokenizer(demo_tokenizer("demo:emoji-scenes"))
    vit = build_backbone("vit", "tiny")
    head = (torch.nn.Linear(vit.config.d_model, len(vocab)) if args.supervised
            else build_backbone("coca", "tiny", vision_dim=vit.config.d_model, image_pool=args.image_pool,
                                text_pool=args.text_pool))  # fmt: skip
    parameters = [*vit.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.05)
    warmup, decay = max(1, args.steps // 6), args.steps // 4
    transform = ImageTextTransform(tokenizer, 14, 100, 48)
    probe = build_probe_set(tokenizer, 14, 100, 48, 3)
    loss_fn, drawn, started = CoCaLoss("sigmoid", 2.0), 0, time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * min((step + 1) / warmup, 1.0, max(0.1, (args.steps - step) / max(1, decay)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if args.supervised:
            labels = [rng.randrange(len(vocab)) for _ in range(args.batch)]
            images = [scenes.render_scene(classifier_image(rng, vocab[label], args.geometry)) for label in labels]
            pieces = [image_patches(image, 14, 100) for image in images]
            loss = F.cross_entropy(classify(vit, head, pieces, args.pool), torch.tensor(labels))
            report = ""
        else:
            items = []
            for index in range(args.batch):
                if rng.random() < args.single:
                    scene = single_emoji_scene(rng, vocab)
                else:
                    drawn += 1
                    scene = scenes.generate_scene(config, "train", drawn)
                if args.group:
                    scene = with_background(scene, random.Random(f"{step}-{index // args.group}").choice(COLOURS))
                items.append(transform({"image": encode_image(scenes.render_scene(scene)), "caption": scene.caption}))
            batch = collate_image_text(items, 48, tokenizer_lib.PAD_ID)
            features = vit(batch["patches"], batch["grid_hw"], batch["seq_ids"])
            out = head(features, batch["seq_ids"], batch["caption_ids"], batch["caption_mask"])
            loss = loss_fn(out, batch["caption_ids"], batch["caption_mask"])["loss"]
            report = ""
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            if args.supervised:
                with evaluating(vit), torch.no_grad():
                    logits = classify(vit, head, list(zip(probe.patches, probe.grids)), args.pool)
                report = f"probe accuracy {(logits.argmax(1) == probe.emoji).float().mean():.2f} (chance 0.016)"
            else:
                with evaluating(vit), evaluating(head):
                    metrics = emoji_probe_metrics(vit, head, probe, 16)
                report = f"probe r@1 i2t {metrics['i2t_r@1']:.3f} t2i {metrics['t2i_r@1']:.3f} (chance 0.016)"
            elapsed = time.perf_counter() - started
            print(f"step {step + 1}: {elapsed:.0f} s, loss {loss.item():.3f}, {report}", flush=True)


def classify(vit: torch.nn.Module, head: torch.nn.Module, pieces: list, pool: str) -> torch.Tensor:
    """Class logits ``[B, 64]`` of images given as ``(patches, grid)``: the ViT's features pooled per image."""
    batch = pack_patches([p for p, _ in pieces], [g for _, g in pieces])
    features = vit(batch["patches"], batch["grid_hw"], batch["seq_ids"])
    grids = split_grids(features, batch["grid_hw"])
    pooled = [grid.mean((0, 1)) if pool == "mean" else grid.flatten(0, 1).amax(0) for grid in grids]
    return head(torch.stack(pooled))


if __name__ == "__main__":
    main()
