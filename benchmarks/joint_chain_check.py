"""The VLM stages chained on one device: text -> ViT CoCa -> alignment -> joint pre-training, then its speed.

Each stage is a real Lightning fit on the demo data (built on first use), handing its checkpoint to the next;
the joint stage runs under ``ModelParallelStrategy`` (FSDP2 on a one-device mesh) and continues stage 1's
global step and optimizer moments. Checks that the chain runs where it is pointed (CUDA with bf16-mixed, or
the CPU), that the joint stage's loss is finite and falls, and measures the joint stage's tokens/s (median
step over the last half). Presets default to ``small`` (GPU); ``--preset tiny --accelerator cpu`` is the
quick CPU version.

Usage::

    python benchmarks/joint_chain_check.py --out joint.json                    # GPU, small presets, bf16
    python benchmarks/joint_chain_check.py --preset tiny --accelerator cpu --precision 32-true --joint-steps 6
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from mm_lightning.callbacks import LRSchedulerResume, ProgressiveMixing
from mm_lightning.data import ImageTextDataModule, MixtureDataModule, TextDataModule
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import AlignStage, JointStage, TextPretrainStage, ViTCoCaStage


class StepClock(pl.Callback):
    """Wall clock and loss at the end of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.losses.append(float(outputs["loss"]))


def fit(module: pl.LightningModule, data: pl.LightningDataModule, steps: int, args: argparse.Namespace,
        callbacks: list, strategy: Any = "auto") -> pl.Trainer:  # fmt: skip
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=steps, strategy=strategy,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, data)
    return trainer


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="joint_chain_"))
    schedule = LRSchedule(peak_lr=3e-4, min_lr=3e-5, warmup_steps=1, total_steps=10_000)  # stable when handed on
    start = time.perf_counter()
    text = TextPretrainStage(llm=args.preset, schedule=schedule)
    fit(text, TextDataModule("demo:sotu", seq_len=args.seq_len, batch_size=2), 3, args, []).save_checkpoint(
        tmp / "text.ckpt"
    )
    images = ImageTextDataModule("demo:emoji-scenes", batch_size=8, patch_size=14, max_patches=args.max_patches)
    vit = ViTCoCaStage(vit=args.preset, coca=args.preset, schedule=schedule)
    fit(vit, images, 3, args, []).save_checkpoint(tmp / "vit.ckpt")
    align = AlignStage(str(tmp / "text.ckpt"), str(tmp / "vit.ckpt"), projector=args.preset, schedule=schedule)
    fit(align, images, 3, args, []).save_checkpoint(tmp / "align.ckpt")
    chain_s = time.perf_counter() - start

    joint = JointStage(str(tmp / "text.ckpt"), str(tmp / "align.ckpt"), handoff="continue")
    sources = [{"name": "text", "kind": "text", "path": "demo:sotu"},
               {"name": "scenes", "kind": "image_text", "path": "demo:emoji-scenes"}]  # fmt: skip
    mixture = MixtureDataModule(sources, seq_len=args.seq_len, samples_per_batch=args.samples, patch_size=14,
                                max_patches=args.max_patches, val_batches=1)  # fmt: skip
    clock = StepClock()
    callbacks = [clock, LRSchedulerResume(str(tmp / "text.ckpt")), ProgressiveMixing(start=0.2, end=0.4)]
    fit(joint, mixture, args.joint_steps, args, callbacks, ModelParallelStrategy(1, 1))
    half = len(clock.ends) // 2
    steps = sorted(b - a for a, b in zip(clock.ends[half:], clock.ends[half + 1 :]))
    median = steps[len(steps) // 2]
    tokens = _tokens_per_step(mixture, args.joint_steps)
    return {
        "device": torch.cuda.get_device_name() if args.accelerator == "cuda" else "cpu",
        "torch": torch.__version__, "preset": args.preset, "precision": args.precision,
        "params": sum(p.numel() for p in joint.parameters()), "chain_s": chain_s,
        "global_step_offset": joint.global_step_offset, "losses": clock.losses,
        "finite": all(math.isfinite(x) for x in clock.losses), "median_step_s": median,
        "tokens_per_step": tokens, "tokens_per_s": tokens / median,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if args.accelerator == "cuda" else None,
    }  # fmt: skip


def _tokens_per_step(mixture: MixtureDataModule, steps: int) -> float:
    """Mean positions per step (rows x seq_len) over the stage's batches."""
    batches = list(mixture.batches("train", 0, steps))
    return sum(b["input_ids"].numel() for b in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="llm, vit, coca and projector preset")
    parser.add_argument("--accelerator", default="cuda")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=32, help="mixture samples per joint step")
    parser.add_argument("--max-patches", type=int, default=256)
    parser.add_argument("--joint-steps", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
    result = run(args)
    losses = result.pop("losses")
    print(json.dumps(result, indent=1))
    print(f"joint loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    if args.out:
        args.out.write_text(json.dumps({**result, "losses": losses}, indent=1))


if __name__ == "__main__":
    main()
