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
from mm_lightning.eval.emoji_probe import ProbeSet, build_probe_set
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
    print(f"{'stage':<14} {'vit':>6} {'projector':>10}")
    for name, path in checkpoints.items():
        kinds = checkpoint_meta(load_checkpoint(path), path).get("backbones", {})
        vit = load_backbone(path, "vit").eval()
        projector = load_backbone(path, "projector").eval() if "projector" in kinds else None
        row = {"vit": linear_probe(centre_features(probe, vit, None), probe.emoji, train)}
        if projector is not None:
            row["projector"] = linear_probe(centre_features(probe, vit, projector), probe.emoji, train)
        results[name] = row
        print(f"{name:<14} {row['vit']:>6.3f} {row.get('projector', float('nan')):>10.3f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
