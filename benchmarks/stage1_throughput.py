"""Stage-1 (text pre-training) training throughput on this machine, with MFU against its own matmul speed.

Runs the real ``TextPretrainStage`` under a real Lightning ``Trainer`` on synthetic packed rows (random
documents ending in EOD, the batch layout of the real data), skips the warm-up steps and times the
rest from one ``on_train_batch_end`` to the next, so data loading, forward, loss, backward and the
optimizer step all count. In the same process, before and after training, it measures plain fp32 square
matmuls (the best of several repeats per size), and reports

* tokens/s over the measured steps,
* achieved model GFLOP/s = tokens/s x ``LLM.flops_per_token(seq_len)`` (PaLM's ``6N + 12 L T d``; it counts
  full causal attention even though packed documents attend to less),
* MFU = achieved GFLOP/s / the best matmul GFLOP/s (the machine's practical peak, not a datasheet figure).

Usage::

    python benchmarks/stage1_throughput.py --out stage1.json
    python benchmarks/stage1_throughput.py --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from bench_common import StepTimer, cpu_name, matmul_gflops

from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.stages.text_pretrain import TextPretrainStage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM preset in the backbone registry")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="measured training steps")
    parser.add_argument("--warmup", type=int, default=3, help="training steps run before measuring (at least 1)")
    parser.add_argument("--mean-doc-len", type=int, default=128, help="expected packed-document length")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (the stage's option)")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def train(args: argparse.Namespace) -> tuple[TextPretrainStage, list[float]]:
    """Fit the stage for ``warmup + steps`` steps; returns it and the measured step times."""
    model = TextPretrainStage(llm=args.preset, compile=args.compile)
    total = args.warmup + args.steps
    data = SyntheticTextDataModule(
        vocab_size=model.llm.config.vocab_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_rows=total * args.batch_size,
        mean_doc_len=args.mean_doc_len,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=total,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.fit(model, datamodule=data)
    ends = timer.ends[args.warmup - 1 :]  # the measured steps run from the last warm-up step's end
    return model, [end - start for start, end in zip(ends, ends[1:])]


def main() -> None:
    args = parse_args()
    before = matmul_gflops(args.matmul_sizes, args.matmul_repeats)
    model, step_times = train(args)
    after = matmul_gflops(args.matmul_sizes, args.matmul_repeats)
    matmul = {n: max(before[n], after[n]) for n in before}  # the machine's speed drifts: keep its best
    tokens_per_step = args.seq_len * args.batch_size
    tokens_per_s = tokens_per_step * len(step_times) / sum(step_times)
    flops_per_token = model.llm.flops_per_token(args.seq_len)
    achieved = tokens_per_s * flops_per_token / 1e9
    peak = max(matmul.values())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "preset": args.preset,
        "params": model.llm.num_params(),
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "warmup_steps": args.warmup,
        "measured_steps": len(step_times),
        "step_times_s": step_times,
        "median_step_s": statistics.median(step_times),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "model_gflops": achieved,
        "matmul_gflops": {str(n): g for n, g in matmul.items()},
        "peak_matmul_gflops": peak,
        "mfu": achieved / peak,
    }
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def print_report(result: dict) -> None:
    mode = "compiled per block" if result["compile"] else "eager"
    print(
        f"\nstage 1, llm/{result['preset']} ({result['params'] / 1e6:.2f}M params), "
        f"batch {result['batch_size']} x {result['seq_len']}, fp32, {mode}"
    )
    print(f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}, lightning {result['lightning']}")
    rows = [
        ("measured steps", f"{result['measured_steps']} (after {result['warmup_steps']} warm-up)"),
        ("median step", f"{result['median_step_s'] * 1e3:.1f} ms"),
        ("tokens/s", f"{result['tokens_per_s']:.0f}"),
        ("model FLOPs/token", f"{result['flops_per_token'] / 1e6:.1f} M"),
        ("achieved model GFLOP/s", f"{result['model_gflops']:.1f}"),
        *((f"matmul {n}^3 GFLOP/s", f"{g:.1f}") for n, g in result["matmul_gflops"].items()),
        ("MFU (vs best matmul)", f"{result['mfu'] * 100:.1f} %"),
    ]
    for name, value in rows:
        print(f"  {name:<24} {value}")


if __name__ == "__main__":
    main()
