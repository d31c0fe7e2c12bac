"""Peak training memory per device at long-context shapes, with and without activation checkpointing, the chunked
output loss and FSDP2 sharding, each variant measured in one run.

A variant trains an LLM preset (``--preset``, ``--vocab`` to change its vocabulary) on rows of ``T`` tokens
(``--tokens``, one row a device, one document a row as the long-context sources give them) for ``--steps`` steps:
forward with the next-token loss as the stages compute it (``NextTokenLoss(chunk).from_hidden`` through the LLM's
``head_loss``: ``chunk`` 0 builds the whole ``[T, V]`` logits), backward, ``AdamW.step()`` (``build_optimizer``),
``zero_grad()``. Activation checkpointing and sharding come from ``mm_lightning.parallel.parallelize``, the function
every stage's ``configure_model`` calls; sharded variants run FSDP2 over ``--world`` gloo processes (``--device cuda``:
NCCL over that many GPUs), each with its own row.

Memory, per device: on the CPU each variant (each rank) runs in a fresh process and the figure is its peak resident
set (``ru_maxrss``) minus its resident set once the model, optimizer and batch exist, i.e. what the training steps
added (activations, logits, gradients, optimizer moments, allocator overheads), as ``chunked_loss_memory.py`` measures
the loss alone; the absolute peak is reported too. On CUDA: ``torch.cuda.max_memory_allocated`` over the steps, minus
the allocation before them. Sharded rows report the largest rank.

Usage::

    python benchmarks/memory.py --threads 1 --out memory.json
    python benchmarks/memory.py --tokens 16384 --variants plain ac+chunked ac+chunked+fsdp2
    python benchmarks/memory.py --device cuda --preset 1b --tokens 32768 --variants ac+chunked
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_common import machine_info, peak_resident_bytes, print_table, resident_bytes
from torch.distributed.device_mesh import init_device_mesh

from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, NextTokenLoss
from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import parallelize

VARIANTS = ("plain", "ac", "chunked", "ac+chunked", "fsdp2", "ac+chunked+fsdp2")
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM preset")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192], help="row lengths T, one row a device")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="ac: activation checkpointing; chunked: the chunked loss; fsdp2: sharded")  # fmt: skip
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="tokens per loss chunk")
    parser.add_argument("--world", type=int, default=2, help="processes (or GPUs) of the sharded variants")
    parser.add_argument("--steps", type=int, default=2, help="training steps (the second has the optimizer moments)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # VARIANTxTOKENS: one variant in this process
    return parser.parse_args(argv)


def flags(variant: str) -> dict[str, bool]:
    parts = variant.split("+")
    return {"ac": "ac" in parts, "chunked": "chunked" in parts, "fsdp2": "fsdp2" in parts}


# -- one variant ---------------------------------------------------------------------------------------------------


def train_variant(args: argparse.Namespace, variant: str, tokens: int, rank: int, world: int) -> dict[str, Any]:
    """Build, shard and train one variant in this process; its memory and step times on this rank."""
    torch.set_num_threads(args.threads)
    on = flags(variant)
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(rank)
    llm = build_backbone("llm", args.preset, **({"vocab_size": args.vocab} if args.vocab else {})).to(device)
    mesh = init_device_mesh(device.type, (world,)) if on["fsdp2"] else None
    parallelize(llm, llm.blocks, mesh, activation_checkpointing=on["ac"])
    optimizer = build_optimizer(llm, OptimizerConfig(), lr=1e-4)
    loss = NextTokenLoss(args.chunk_size if on["chunked"] else 0)
    ids = torch.randint(0, llm.config.vocab_size, (1, tokens + 1), device=device)  # [1, T + 1]: one document
    inputs, labels = ids[:, :-1], ids[:, 1:]
    seq_ids = torch.zeros_like(inputs)
    positions = torch.arange(tokens, device=device)[None]
    before = _allocated(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        out = llm(input_ids=inputs, position_ids=positions, seq_ids=seq_ids,
                  head_loss=partial(loss.from_hidden, labels=labels))  # fmt: skip
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_resident_bytes()
    return {"rank": rank, "before_bytes": before, "peak_bytes": peak, "step_peak_bytes": peak - before,
            "step_times_s": times, "loss": float(out["loss"])}  # fmt: skip


def _allocated(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resident_bytes()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rank(rank: int, args: argparse.Namespace, variant: str, tokens: int, port: int, folder: str) -> None:
    """One rank of a sharded variant (``mp.spawn`` target): its figures go to ``folder/rank<r>.json``."""
    backend = "nccl" if args.device == "cuda" else "gloo"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    try:
        result = train_variant(args, variant, tokens, rank, args.world)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def worker(args: argparse.Namespace) -> None:
    """``--worker VARIANTxTOKENS``: the variant in this fresh process (or its ranks), one JSON line on stdout."""
    variant, tokens = args.worker.rsplit("x", 1)
    if not flags(variant)["fsdp2"]:
        print(json.dumps({"ranks": [train_variant(args, variant, int(tokens), 0, 1)]}))
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = Path(f"/tmp/memory_bench_{os.getpid()}")
    folder.mkdir(exist_ok=True)
    mp.spawn(run_rank, args=(args, variant, int(tokens), port, str(folder)), nprocs=args.world, join=True)
    ranks = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(args.world)]
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    print(json.dumps({"ranks": ranks}))


# -- the driver ------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, variant: str, tokens: int, argv: list[str]) -> dict[str, Any]:
    """One variant in a fresh subprocess; its per-device figures (the largest rank's)."""
    command = [sys.executable, __file__, *argv, "--worker", f"{variant}x{tokens}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"variant": variant, "tokens": tokens, "error": done.stderr.strip().splitlines()[-1][-300:]}
    ranks = json.loads(done.stdout.strip().splitlines()[-1])["ranks"]
    worst = max(ranks, key=lambda r: r["step_peak_bytes"])
    return {"variant": variant, "tokens": tokens, "processes": len(ranks), "ranks": ranks, "loss": worst["loss"],
            "step_peak_bytes": worst["step_peak_bytes"], "peak_bytes": worst["peak_bytes"],
            "before_bytes": worst["before_bytes"], "last_step_s": max(r["step_times_s"][-1] for r in ranks),
            }  # fmt: skip


def driver_argv(args: argparse.Namespace) -> list[str]:
    """The options a worker needs, as command-line arguments."""
    argv = ["--preset", args.preset, "--chunk-size", str(args.chunk_size), "--world", str(args.world),
            "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]  # fmt: skip
    return argv + (["--vocab", str(args.vocab)] if args.vocab else [])


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    rows = [measure(args, variant, tokens, driver_argv(args)) for tokens in args.tokens for variant in args.variants]
    for row in rows:
        plain = next((r for r in rows if r["tokens"] == row["tokens"] and r["variant"] == "plain"), None)
        if plain and "error" not in row and "error" not in plain:
            row["vs_plain"] = row["step_peak_bytes"] / plain["step_peak_bytes"]
    vocab = args.vocab or build_backbone("llm", args.preset).config.vocab_size
    method = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS of a fresh process per rank"
    print(f"\npeak memory per device of {args.steps} training steps, llm/{args.preset} (vocab {vocab}), one row of T "
          f"tokens a device, loss chunk {args.chunk_size}, {args.threads} thread(s); {method}, minus the memory held "
          "before the steps")  # fmt: skip
    table = [(r["tokens"], r["variant"], r.get("processes", "-"),
              f"{r['step_peak_bytes'] / MIB:.0f}" if "error" not in r else f"failed: {r['error']}",
              f"{r['peak_bytes'] / MIB:.0f}" if "error" not in r else "-",
              f"{r['vs_plain']:.2f}" if "vs_plain" in r else "-",
              f"{r['last_step_s']:.1f}" if "error" not in r else "-") for r in rows]  # fmt: skip
    print_table(["T", "variant", "processes", "step peak MiB", "absolute peak MiB", "vs plain", "step s"], table)
    report = {"machine": machine_info(args.device), "command": " ".join(sys.argv), "method": method,
              "preset": args.preset, "vocab": vocab, "chunk_size": args.chunk_size, "world": args.world,
              "steps": args.steps, "rows": rows}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
