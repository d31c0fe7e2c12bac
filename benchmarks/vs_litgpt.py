"""Training-step time of our LLM against litgpt's ``GPT`` at one Llama-style shape, measured alternately.

Shape: 6 blocks, width 256, 8 query heads, 4 KV heads, SwiGLU hidden 688, vocab 8192, RMSNorm, RoPE,
untied embeddings (litgpt's ``GPT`` does not tie), sequence 512, batch 8, fp32. One step is forward,
next-token cross-entropy, backward, ``AdamW.step()`` and ``zero_grad()``.

Each side runs the way its framework trains by default:

* ours: ``build_optimizer`` (``torch.optim.AdamW``, two groups: no weight decay on norm gains) and
  ``NextTokenLoss`` (one ``F.cross_entropy``), as ``TextPretrainStage`` does; rows are one document
  each (no ``seq_ids``), which is the only input litgpt's ``GPT`` takes.
* litgpt: ``torch.optim.AdamW(model.parameters(), fused=device.type == "cuda")`` and
  ``chunked_cross_entropy`` (chunks of 128 rows), as ``litgpt/pretrain.py`` does.

Both use lr 4e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1. The steps run ours, litgpt, litgpt,
ours, ... (the order flips each round, so drift in machine load hits both sides evenly) after warm-up
steps; the median of each side is reported with the ratio ``litgpt / ours`` (> 1: ours is faster), and
the median of the per-round ratios (each round's two steps ran back to back, under the same load).

litgpt is never a project dependency. Install it, with the one extra module its ``litgpt.model``
import chain needs that the project's environment lacks, into a scratch folder::

    pip install --no-deps --target /tmp/litgpt_site litgpt psutil

then run::

    python benchmarks/vs_litgpt.py --litgpt-path /tmp/litgpt_site            # eager
    python benchmarks/vs_litgpt.py --litgpt-path /tmp/litgpt_site --compile both  # both compiled per block
    python benchmarks/vs_litgpt.py --litgpt-path /tmp/litgpt_site --compile ours  # our compile switch on
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_lightning.losses import NextTokenLoss
from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import apply_compile

SHAPE = {"n_layers": 6, "d_model": 256, "n_heads": 8, "n_kv_heads": 4, "ffn_hidden": 688, "vocab_size": 8192}
LR, BETAS, EPS, WEIGHT_DECAY = 4e-4, (0.9, 0.95), 1e-8, 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--litgpt-path",
        default=os.environ.get("LITGPT_PATH"),
        help="folder holding the litgpt package (default: $LITGPT_PATH)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (one step of each side per round)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured warm-up steps of each side")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--compile",
        choices=["none", "ours", "both"],
        default="none",
        help="torch.compile each block: on neither side, on ours only (our config switch), or on both",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def import_litgpt(path: str | None) -> Any:
    """Import ``litgpt.model`` from ``path`` (prepended to ``sys.path``), or exit with install instructions."""
    if path:
        sys.path.insert(0, path)
    try:
        import litgpt.model
        import litgpt.utils
    except ImportError as error:
        sys.exit(
            f"Cannot import litgpt ({error}). It is not a project dependency; install it in a scratch folder:\n"
            "    pip install --no-deps --target /tmp/litgpt_site litgpt psutil\n"
            "and pass --litgpt-path /tmp/litgpt_site (or set LITGPT_PATH)."
        )
    return litgpt


def build_ours(compile: bool) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """Our LLM at :data:`SHAPE`, untied, with the stage's optimizer and loss."""
    model = build_backbone("llm", "tiny", **SHAPE, tie_embeddings=False)
    if compile:
        apply_compile(model.blocks)
    config = OptimizerConfig(name="adamw", weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)
    optimizer = build_optimizer(model, config, lr=LR)
    loss = NextTokenLoss()
    return model, optimizer, lambda x, y: loss(model(input_ids=x), y)["loss"]


def build_litgpt(litgpt: Any, seq_len: int, compile: bool) -> tuple[nn.Module, torch.optim.Optimizer, Callable]:
    """litgpt's ``GPT`` at :data:`SHAPE`, with the optimizer and loss of ``litgpt/pretrain.py``."""
    config = litgpt.model.Config(
        block_size=seq_len,
        vocab_size=SHAPE["vocab_size"],
        padded_vocab_size=SHAPE["vocab_size"],
        n_layer=SHAPE["n_layers"],
        n_embd=SHAPE["d_model"],
        n_head=SHAPE["n_heads"],
        n_query_groups=SHAPE["n_kv_heads"],
        intermediate_size=SHAPE["ffn_hidden"],
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=1e-5,
        mlp_class_name="LLaMAMLP",
        rope_base=50_000,
    )
    model = litgpt.model.GPT(config)
    if compile:
        apply_compile(model.transformer.h)
    fused = next(model.parameters()).device.type == "cuda"  # litgpt/pretrain.py: {"fused": device.type == "cuda"}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=fused
    )
    return model, optimizer, lambda x, y: litgpt.utils.chunked_cross_entropy(model(x), y)


def train_step(optimizer: torch.optim.Optimizer, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """One training step; returns its wall time in seconds."""
    start = time.perf_counter()
    loss = loss_fn(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def measure(sides: dict[str, tuple], batch: tuple[torch.Tensor, torch.Tensor], warmup: int, rounds: int) -> dict:
    """Warm up each side, then alternate single steps, flipping the order every round."""
    for _, optimizer, loss_fn in sides.values():
        for _ in range(warmup):
            train_step(optimizer, loss_fn, *batch)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            _, optimizer, loss_fn = sides[name]
            times[name].append(train_step(optimizer, loss_fn, *batch))
    return times


def main() -> None:
    args = parse_args()
    litgpt = import_litgpt(args.litgpt_path)
    torch.manual_seed(args.seed)
    tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch_size, args.seq_len + 1))
    batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    sides = {
        "ours": build_ours(args.compile in ("ours", "both")),
        "litgpt": build_litgpt(litgpt, args.seq_len, args.compile == "both"),
    }
    params = {name: sum(p.numel() for p in side[0].parameters()) for name, side in sides.items()}
    if params["ours"] != params["litgpt"]:
        sys.exit(f"The two models differ in size: {params}")
    times = measure(sides, batch, args.warmup, args.rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    paired = statistics.median(theirs / ours for ours, theirs in zip(times["ours"], times["litgpt"]))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "litgpt": _litgpt_version(),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "shape": SHAPE,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "adamw_fused": {name: bool(side[1].defaults.get("fused")) for name, side in sides.items()},
        "params": params["ours"],
        "rounds": args.rounds,
        "warmup": args.warmup,
        "median_step_s": medians,
        "step_times_s": times,
        "ratio_litgpt_over_ours": medians["litgpt"] / medians["ours"],
        "median_paired_ratio": paired,
    }
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _litgpt_version() -> str:
    try:
        return importlib.metadata.version("litgpt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def print_report(result: dict) -> None:
    mode = {"none": "eager", "ours": "ours compiled per block, litgpt eager", "both": "both compiled per block"}[
        result["compile"]
    ]
    tokens = result["seq_len"] * result["batch_size"]
    print(
        f"\n{result['params'] / 1e6:.2f}M params, batch {result['batch_size']} x {result['seq_len']}, fp32, {mode}, "
        f"torch {result['torch']}, litgpt {result['litgpt']}, {result['threads']} threads"
    )
    print(f"{'side':<8} {'median step (s)':>16} {'min (s)':>9} {'max (s)':>9} {'tokens/s':>10}")
    for name, median in result["median_step_s"].items():
        steps = result["step_times_s"][name]
        print(f"{name:<8} {median:>16.3f} {min(steps):>9.3f} {max(steps):>9.3f} {tokens / median:>10.0f}")
    print(
        f"litgpt / ours = {result['ratio_litgpt_over_ours']:.3f} (ratio of medians), "
        f"{result['median_paired_ratio']:.3f} (median of the per-round ratios); > 1: ours is faster"
    )


if __name__ == "__main__":
    main()
