"""Packing efficiency of the demo pipeline's data: the share of non-padding positions, packed as the datamodules pack
it, against padding every item to the longest item of its batch, both measured on the same batches in one run.

Every stage of ``configs/pipelines/demo.yaml`` gets its real datamodule from its stage config (with the data changes
its callbacks make: the long-context ``seq_len``, joint pre-training's multimodal-share ramp over the demo's
``max_steps``), on the ``demo:`` data. For each stage it reads ``--batches`` training batches spread evenly over the
stage's steps (a mixture batch is a pure function of its index; the litdata stages' loaders are read in order) and
counts, per kind of sequence:

* ``text rows`` (stage 1, ``TextDataModule``): LLM positions. An item is a document (or the piece of one a row holds).
* ``images`` (every stage with images): ViT patch positions of the natively packed images. An item is one image.
* ``captions`` (stage 2a's CoCa decoder, ``ImageTextDataModule``): caption positions, padded to ``max_caption_len``.
  An item is one caption.
* ``caption rows`` (stage 2b, ``caption_rows``): LLM positions of an image's tokens followed by its caption.
* ``mixed rows`` (the joint stages, ``MixtureDataModule``): LLM positions. An item is one mixture sample (a text
  block, an image with its caption, a document, ...), as packed by ``pack_samples``.

``packed`` = non-padding positions / positions of the batch as built (for mixed rows: the samples' positions plus the
gap filler's, the training text pieces that fill each row's end, :mod:`mm_lightning.data.mixture.filler`); ``padded`` =
the items' positions / (items x the batch's longest item), the layout of a loader that pads each item to the longest
in its batch; ``fewest rows`` (rows only) = the items' positions / (``ceil(used / L)`` rows of ``L``), the best any
packing that keeps every item whole and adds nothing can do with the batch's samples (the last row's gap, which the
filler closes). ``filler`` = filler positions / non-padding positions.
Target (issue 16): the demo mixture (``mixed rows`` over the joint stages) at least 95% non-padding.

Usage::

    python benchmarks/packing_efficiency.py --out packing_efficiency.json
    python benchmarks/packing_efficiency.py --stages joint cooldown --batches 50
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from bench_common import build_datamodule, demo_stages, machine_info, print_table

from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.data.mixture.packing import tokens_per_image
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.data.text import TextDataModule
from mm_lightning.tokenizer import IMAGE_ID, PAD_ID

TARGET = 0.95
MIXTURE_KINDS = ("mixed rows",)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", help="demo stages to measure (default: all)")
    parser.add_argument("--batches", type=int, default=40, help="training batches per stage")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def efficiency(lengths: list[int], positions: int, row: int | None = None,
               filler: int = 0) -> tuple[int, int, int, int, int]:  # fmt: skip
    """``(used, packed, padded, fewest, filler)`` positions of one batch's items: ``positions`` as built, the items
    padded to the longest, the fewest rows of ``row`` positions any packing that keeps items whole needs
    (``ceil(used / row)``; ``positions`` without rows), and the gap filler's positions (not items)."""
    used = sum(lengths)
    fewest = positions if row is None else -(-used // row) * row
    return used, positions, len(lengths) * max(lengths, default=0), fewest, filler


def document_lengths(seq_ids: torch.Tensor, keep: torch.Tensor) -> list[int]:
    """Positions of each packed sequence (row by row) among the positions ``keep`` marks, ``seq_ids`` ``[R, L]``."""
    lengths = []
    for row, mask in zip(seq_ids, keep):
        lengths += torch.unique_consecutive(row[mask], return_counts=True)[1].tolist()
    return lengths


def image_counts(batch: dict[str, Any]) -> tuple[int, int, int] | None:
    """Patch positions of a batch's packed images (``None`` without images)."""
    if batch.get("grid_hw") is None:
        return None
    lengths = (batch["grid_hw"][:, 0] * batch["grid_hw"][:, 1]).tolist()
    return efficiency(lengths, int(batch["patches"].shape[1]))


def measure_batch(batch: dict[str, Any], kind: str, merge_factor: int) -> dict[str, tuple[int, int, int]]:
    """The ``(used, packed, padded)`` positions of each sequence kind of one batch of a datamodule ``kind``."""
    counts = {}
    if kind == "text":
        keep = batch["input_ids"] != PAD_ID  # [B, T]
        counts["text rows"] = efficiency(document_lengths(batch["seq_ids"], keep), batch["input_ids"].numel(),
                                         batch["input_ids"].shape[1])  # fmt: skip
    elif kind == "mixture":
        filler = int(batch["filler_tokens"].sum()) if batch.get("filler_tokens") is not None else 0
        counts["mixed rows"] = efficiency(batch["sample_tokens"].tolist(), batch["input_ids"].numel(),
                                          batch["input_ids"].shape[1], filler)  # fmt: skip
    else:  # image-text: stage 2a's padded captions, stage 2b's caption rows
        captions = batch["caption_mask"].sum(1).tolist()
        counts["captions"] = efficiency(captions, batch["caption_mask"].numel())
        rows = caption_rows(batch, lambda h, w: tokens_per_image((h, w), merge_factor), IMAGE_ID)
        counts["caption rows"] = efficiency(document_lengths(rows["seq_ids"], rows["seq_ids"] >= 0),
                                            rows["input_ids"].numel())  # fmt: skip
    images = image_counts(batch)
    if images is not None:
        counts["images"] = images
    return counts


def stage_batches(data: Any, count: int, max_steps: int) -> list[dict[str, Any]]:
    """``count`` training batches: spread over the stage's steps for a mixture, the loader's first ones otherwise."""
    data.prepare_data()
    data.setup("fit")
    if isinstance(data, MixtureDataModule):
        stream = data.batches("train", 0, None)
        return [stream.batch(i * max(1, max_steps) // count) for i in range(count)]
    loader = iter(data.train_dataloader())
    return [next(loader) for _ in range(count)]


def datamodule_kind(data: Any) -> str:
    return "mixture" if isinstance(data, MixtureDataModule) else "text" if isinstance(data, TextDataModule) else "image"


def measure_stage(name: str, config: dict, count: int) -> dict[str, dict[str, float]]:
    """Summed positions of each sequence kind over ``count`` batches of stage ``name``."""
    data = build_datamodule(config, num_workers=0)
    kind, merge_factor = datamodule_kind(data), getattr(data, "merge_factor", 2)
    if name == "vit":  # stage 2a feeds the CoCa decoder padded captions; caption rows are stage 2b's
        skip = "caption rows"
    elif name == "align":
        skip = "captions"
    else:
        skip = None
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for batch in stage_batches(data, count, config["trainer"]["max_steps"]):
        for seq_kind, values in measure_batch(batch, kind, merge_factor).items():
            if seq_kind != skip:
                sums[seq_kind] = [a + b for a, b in zip(sums[seq_kind], values)]
    return {seq_kind: summarise(*values) for seq_kind, values in sums.items()}


def summarise(used: int, packed: int, padded: int, fewest: int, filler: int = 0) -> dict[str, float]:
    return {"used_positions": used, "packed_positions": packed, "padded_positions": padded,
            "fewest_rows_positions": fewest, "filler_positions": filler, "packed_share": (used + filler) / packed,
            "padded_share": used / padded, "fewest_rows_share": used / fewest,
            "filler_share": filler / max(1, used + filler)}  # fmt: skip


def mixture_total(results: dict[str, dict]) -> dict[str, Any] | None:
    """The demo mixture's figures: ``mixed rows`` summed over the joint stages measured."""
    parts = [kinds[k] for kinds in results.values() for k in MIXTURE_KINDS if k in kinds]
    if not parts:
        return None
    keys = ("used_positions", "packed_positions", "padded_positions", "fewest_rows_positions", "filler_positions")
    total = summarise(*(sum(p[key] for p in parts) for key in keys))
    stages = [s for s, kinds in results.items() if any(k in kinds for k in MIXTURE_KINDS)]
    return total | {"target": TARGET, "holds": total["packed_share"] >= TARGET, "stages": stages}


def main() -> None:
    args = parse_args()
    stages = demo_stages()
    names = args.stages or list(stages)
    results = {name: measure_stage(name, stages[name], args.batches) for name in names}
    mixture = mixture_total(results)
    rows = [(stage, kind, f"{r['used_positions'] + r['filler_positions']:,}", *(f"{r[f'{k}_share']:.1%}" for k in
             ("packed", "padded", "fewest_rows", "filler"))) for stage, kinds in results.items()
            for kind, r in kinds.items()]  # fmt: skip
    print(f"\npacking efficiency of the demo pipeline's data, {args.batches} training batches per stage")
    print_table(["stage", "sequences", "non-padding positions", "packed", "padded to longest", "fewest rows", "filler"],
                rows)  # fmt: skip
    if mixture:
        print(f"demo mixture ({' + '.join(mixture['stages'])}, mixed rows): {mixture['packed_share']:.1%} non-padding "
              f"packed, {mixture['padded_share']:.1%} padded to the longest; target >= {TARGET:.0%}: "
              f"{'holds' if mixture['holds'] else 'FAILS'}")  # fmt: skip
    report = {"machine": machine_info(), "command": " ".join(sys.argv), "batches_per_stage": args.batches,
              "stages": results, "demo_mixture": mixture}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
