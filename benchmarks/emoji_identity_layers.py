"""Where along the vision path does emoji identity get lost? A linear probe at the ViT and at the projector, per stage.

Issue 12's demo ViT tells the 64 emoji apart (probe retrieval r@1 > 0.5), yet the captions of the later stages name
them no more often than chance. This script asks which layer loses them: for every stage checkpoint of a pipeline run
that holds a ViT (and a projector), it encodes the emoji-identity probe images (:mod:`mm_lightning.eval.emoji_probe`:
each emoji centred alone on each background) and trains a 64-way linear classifier on the features of the image's
centre, where the emoji lies:

- ``vit``: the ViT's patch features of the centre 3 x 3 patches (the emoji's cells), concatenated;
- ``projector``: the projector's tokens (pixel shuffle + MLP, what the LLM reads) of the centre 2 x 2 merged cells.

The classifier trains on the first backgrounds of the palette and is scored on the others (``--test-backgrounds``), so
a feature that only encodes colour scores chance (1/64) and one that keeps identity across backgrounds scores high.
With one training image per emoji and background, the figure is a lower bound of what the features hold.

``--scenes N`` adds the same probe on the demo's scenes, where captions need it: per emoji of a scene, the channel-wise
max over the ViT patches of its box (``vit_scenes``) and over the projector tokens that cover the box
(``projector_scenes``); fitted on the emoji of ``N`` train scenes, scored on those of ``N // 4`` validation scenes
(compositions never seen in training).

Usage::

    python benchmarks/emoji_identity_layers.py --run-dir runs/pipelines/demo --out emoji_layers.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint
from mm_lightning.demo import demo_tokenizer
from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene, vocabulary
from mm_lightning.eval.emoji_probe import ProbeSet, build_probe_set
from mm_lightning.media.images import image_patches
from mm_lightning.models.vit import split_grids
from mm_lightning.ops.patches import pack_patches

STAGES = ("vit", "align", "joint", "cooldown", "long_context")


@torch.no_grad()
def centre_features(probe: ProbeSet, vit: nn.Module, projector: nn.Module | None, batch_size: int = 32) -> Tensor:
    """``[B, F]`` features of each probe image's centre: 3 x 3 ViT patches, or 2 x 2 projector tokens."""
    rows = []
    for start in range(0, len(probe), batch_size):
        batch = pack_patches(probe.patches[start : start + batch_size], probe.grids[start : start + batch_size])
        grids = split_grids(vit(batch["patches"], batch["grid_hw"], batch["seq_ids"]), batch["grid_hw"])  # [h, w, d]
        if projector is None:
            rows += [grid[grid.shape[0] // 2 - 1 : grid.shape[0] // 2 + 2,
                          grid.shape[1] // 2 - 1 : grid.shape[1] // 2 + 2].flatten() for grid in grids]  # fmt: skip
            continue
        for grid, tokens in zip(grids, projector(grids)):
            height, width = projector.merged_grid(*grid.shape[:2])
            tokens = tokens.view(height, width, -1)
            rows.append(tokens[height // 2 - 1 : height // 2 + 1, width // 2 - 1 : width // 2 + 1].flatten())
    return torch.stack(rows).float()


@torch.no_grad()
def scene_box_features(
    split: str, count: int, vit: nn.Module, projector: nn.Module | None, batch_size: int = 32
) -> tuple[dict[str, Tensor], Tensor]:
    """Per emoji of the first ``count`` scenes of ``split``: the max over its box's ViT patches (``vit_scenes``) and
    over the projector tokens covering the box (``projector_scenes``), and the emoji's index in the vocabulary."""
    config, patch = SceneConfig(), vit.config.patch_size  # the demo draws scenes on cells of the ViT's patch
    index = {sprite: i for i, sprite in enumerate(vocabulary(config.vocab_size, config.seed))}
    rows: dict[str, list[Tensor]] = {"vit_scenes": [], "projector_scenes": []}
    labels = []
    for start in range(0, count, batch_size):
        scenes = [generate_scene(config, split, i) for i in range(start, min(count, start + batch_size))]
        cut = [image_patches(render_scene(scene), patch, 100) for scene in scenes]  # demo scenes fit unresized
        batch = pack_patches([patches for patches, _ in cut], [grid for _, grid in cut])
        grids = split_grids(vit(batch["patches"], batch["grid_hw"], batch["seq_ids"]), batch["grid_hw"])
        merged = projector(grids) if projector is not None else [None] * len(grids)
        factor = projector.config.shuffle_factor if projector is not None else 1
        for scene, grid, tokens in zip(scenes, grids, merged, strict=True):
            if tokens is not None:
                tokens = tokens.view(*projector.merged_grid(*grid.shape[:2]), -1)
            for sprite, (x, y, size) in zip(scene.sprites, scene.boxes, strict=True):
                col, row, cells = x // patch, y // patch, size // patch
                rows["vit_scenes"].append(grid[row : row + cells, col : col + cells].flatten(0, 1).amax(0))
                if tokens is not None:
                    cover = tokens[row // factor : (row + cells - 1) // factor + 1,
                                   col // factor : (col + cells - 1) // factor + 1]  # fmt: skip
                    rows["projector_scenes"].append(cover.flatten(0, 1).amax(0))
                labels.append(index[sprite])
    return {name: torch.stack(found).float() for name, found in rows.items() if found}, torch.tensor(labels)


def scene_probe(vit: nn.Module, projector: nn.Module | None, scenes: int) -> dict[str, float]:
    """Linear-probe accuracy of emoji identity over scene boxes: fitted on train scenes, scored on validation ones."""
    fit, fit_labels = scene_box_features("train", scenes, vit, projector)
    held, held_labels = scene_box_features("val", max(1, scenes // 4), vit, projector)
    train = torch.arange(len(fit_labels) + len(held_labels)) < len(fit_labels)
    labels = torch.cat([fit_labels, held_labels])
    return {name: linear_probe(torch.cat([fit[name], held[name]]), labels, train, steps=300) for name in fit}


def linear_probe(features: Tensor, labels: Tensor, train: Tensor, steps: int = 500, seed: int = 0) -> float:
    """Accuracy on the ``~train`` rows of a softmax classifier fitted (Adam, small L2) on the standardised rest."""
    torch.manual_seed(seed)
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    x = (features - mean) / std
    classes = int(labels.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(x[train] @ weight + bias, labels[train]) + 1e-3 * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((x[~train] @ weight + bias).argmax(1) == labels[~train]).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pipelines/demo"), help="a pipeline run folder")
    parser.add_argument("--checkpoints", nargs="*", default=None,
                        help="name=path pairs instead of --run-dir (e.g. vit=runs/x/last.ckpt)")  # fmt: skip
    parser.add_argument("--test-backgrounds", type=int, default=3, help="backgrounds held out of the probe's fit")
    parser.add_argument(
        "--scenes",
        type=int,
        default=0,
        help="also probe emoji boxes in this many train scenes (scored on a quarter as many val ones)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoints:
        checkpoints = dict(pair.split("=", 1) for pair in args.checkpoints)
    else:
        checkpoints = {name: args.run_dir / name / "checkpoints" / "last.ckpt" for name in STAGES}
        checkpoints = {name: path for name, path in checkpoints.items() if path.exists()}
    if not checkpoints:
        parser.error(f"no stage checkpoint found under {args.run_dir} (looked for {', '.join(STAGES)})")
    tokenizer = tokenizer_lib.load_tokenizer(demo_tokenizer("demo:emoji-scenes"))
    probe = build_probe_set(tokenizer, 14, 100, 48, None)
    train = probe.background < len(probe.backgrounds) - args.test_backgrounds
    results = {
        "chance": 1 / (int(probe.emoji.max()) + 1),
        "test_backgrounds": probe.backgrounds[-args.test_backgrounds :],
    }
    print(f"emoji identity, linear probe on the image centre; fit on {int(train.sum())} images, scored on "
          f"{int((~train).sum())} of unseen backgrounds; chance {results['chance']:.3f}")  # fmt: skip
    columns = ["vit", "projector"] + (["vit_scenes", "projector_scenes"] if args.scenes else [])
    print(f"{'stage':<14} " + " ".join(f"{column:>16}" for column in columns))
    for name, path in checkpoints.items():
        kinds = checkpoint_meta(load_checkpoint(path), path).get("backbones", {})
        vit = load_backbone(path, "vit").eval()
        projector = load_backbone(path, "projector").eval() if "projector" in kinds else None
        row = {"vit": linear_probe(centre_features(probe, vit, None), probe.emoji, train)}
        if projector is not None:
            row["projector"] = linear_probe(centre_features(probe, vit, projector), probe.emoji, train)
        if args.scenes:
            row.update(scene_probe(vit, projector, args.scenes))
        results[name] = row
        print(f"{name:<14} " + " ".join(f"{row.get(column, float('nan')):>16.3f}" for column in columns), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
