"""Muon against AdamW under FSDP2: optimizer-step and training-step time on N processes, measured alternately.

Both optimizers come from ``build_optimizer`` as a stage builds them (``muon``: Muon for the blocks' 2-D weights,
each orthogonalised whole by one owner rank, AdamW for embeddings and norms; ``adamw``: AdamW for all). Each trains
its own copy of one LLM (same initial weights, same batches), sharded with FSDP2 over N gloo CPU processes
(``--device cuda``: N GPUs over NCCL). A round runs one training step of each (forward, next-token loss, backward,
``optimizer.step()``, ``zero_grad()``), the order flipping every round so drift in machine load hits both evenly.
Each timed region starts after a barrier and counts the slowest rank. The report gives each optimizer's median step
and optimizer step, tokens/s over all ranks, the per-round ratio Muon / AdamW, and the time of the exchange a Muon
step makes (its two all-to-alls with Newton-Schulz left out, timed apart after each round).

    python benchmarks/muon_fsdp2.py --out muon_fsdp2.json                      # llm/tiny, 2 CPU processes
    python benchmarks/muon_fsdp2.py --preset 1b --device cuda --world 1 --batch-size 4 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import parallelize
from mm_lightning.parallel.newton_schulz import orthogonalise_all

OPTIMIZERS = ("adamw", "muon")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="llm preset (tiny: 5.0M parameters, 4 blocks of width 256)")
    parser.add_argument("--world", type=int, default=2, help="processes (CPU) or GPUs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per process")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (one step of each optimizer)")
    parser.add_argument("--out", type=Path, help="JSON file for the result")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result_file = Path(f"/tmp/muon_fsdp2_{os.getpid()}.json")
    mp.spawn(run_rank, args=(args, port, result_file), nprocs=args.world, join=True)
    result = json.loads(result_file.read_text())
    result_file.unlink()
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def run_rank(rank: int, args: argparse.Namespace, port: int, result_file: Path) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    try:
        result = measure(args, device, init_device_mesh(device.type, (args.world,)))
        if rank == 0:
            result_file.write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, device: torch.device, mesh) -> dict:
    sides = {name: build_side(args.preset, name, device, mesh) for name in OPTIMIZERS}
    generator = torch.Generator().manual_seed(1000 + dist.get_rank())
    vocab = sides["adamw"][0].config.vocab_size
    model = sides["muon"][0]
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and ".blocks." in f".{n}"]
    times: dict[str, dict[str, list[float]]] = {name: {"step": [], "optimizer": []} for name in OPTIMIZERS}
    times["muon"]["exchange"] = []
    for round_index in range(args.warmup + args.rounds):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator).to(device)
        order = OPTIMIZERS if round_index % 2 == 0 else OPTIMIZERS[::-1]
        for name in order:
            step, optimizer_step = train_step(*sides[name], ids, device)
            if round_index >= args.warmup:
                times[name]["step"].append(step)
                times[name]["optimizer"].append(optimizer_step)
        exchange = exchange_time(hidden, device)
        if round_index >= args.warmup:
            times["muon"]["exchange"].append(exchange)
    return {
        "machine": machine(args, device),
        "shape": {
            "preset": args.preset,
            "parameters": sum(p.numel() for p in model.parameters()),
            "muon_matrices": len(hidden),
            "muon_parameters": sum(p.numel() for p in hidden),
            "batch_per_rank": args.batch_size,
            "seq_len": args.seq_len,
            "world": args.world,
        },  # fmt: skip
        "tokens_per_step": args.batch_size * args.seq_len * args.world,
        "warmup_rounds": args.warmup,
        "times_s": times,
    }


def build_side(preset: str, name: str, device: torch.device, mesh) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_backbone("llm", preset).to(device)
    parallelize(model, model.blocks, mesh)
    return model, build_optimizer(model, OptimizerConfig(name=name), lr=1e-3)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
               device: torch.device) -> tuple[float, float]:  # fmt: skip
    """Seconds of the whole step and of ``optimizer.step()`` alone, each the slowest rank's."""
    start = synced_clock(device)
    logits = model(ids)  # [B, T, V]
    F.cross_entropy(logits.flatten(0, 1), ids.roll(-1, dims=1).flatten()).backward()
    optimizer_start = synced_clock(device)
    optimizer.step()
    optimizer_end = synced_clock(device)
    optimizer.zero_grad()
    end = synced_clock(device)
    return slowest_rank(end - start, device), slowest_rank(optimizer_end - optimizer_start, device)


def exchange_time(matrices: list[torch.Tensor], device: torch.device) -> float:
    """Seconds of the exchange one Muon step makes (rows to each matrix's owner and back, bf16) without the
    Newton-Schulz in between, the slowest rank's."""
    start = synced_clock(device)
    with torch.no_grad():
        orthogonalise_all([matrix.detach() for matrix in matrices], lambda whole: whole)
    return slowest_rank(synced_clock(device) - start, device)


def synced_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def slowest_rank(seconds: float, device: torch.device) -> float:
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    dist.barrier()
    return value.item()


def machine(args: argparse.Namespace, device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads_per_process": torch.get_num_threads(),
            "torch": torch.__version__, "device": device.type, "backend": dist.get_backend()}  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_report(result: dict) -> None:
    shape, times = result["shape"], result["times_s"]
    print(f"machine: {result['machine']}")
    print(f"llm/{shape['preset']}: {shape['parameters'] / 1e6:.1f}M parameters, {shape['muon_matrices']} Muon matrices "
          f"({shape['muon_parameters'] / 1e6:.1f}M); FSDP2 over {shape['world']} processes x {shape['batch_per_rank']} "
          f"rows x {shape['seq_len']} tokens; {len(times['adamw']['step'])} rounds after "
          f"{result['warmup_rounds']} warm-up")  # fmt: skip
    print(f"{'optimizer':<10} {'median step (s)':>16} {'optimizer.step (s)':>19} {'share':>6} {'tokens/s':>9}")
    for name in OPTIMIZERS:
        step, optimizer_step = (statistics.median(times[name][k]) for k in ("step", "optimizer"))
        print(f"{name:<10} {step:>16.3f} {optimizer_step:>19.3f} {optimizer_step / step:>6.0%} "
              f"{result['tokens_per_step'] / step:>9.0f}")  # fmt: skip
    exchange = statistics.median(times["muon"]["exchange"])
    print(f"of Muon's optimizer.step: the exchange of its {shape['muon_matrices']} matrices {exchange:.3f} s (median, "
          "timed apart); the rest is Newton-Schulz (each rank its share) and the AdamW part")  # fmt: skip
    step_ratio, optimizer_ratio = (round_ratio(times, key) for key in ("step", "optimizer"))
    print(f"Muon / AdamW, median of per-round ratios: step {step_ratio:.2f}x, optimizer.step {optimizer_ratio:.2f}x")


def round_ratio(times: dict, key: str) -> float:
    """Median over rounds of Muon's time / AdamW's (each round's two steps ran back to back)."""
    return statistics.median(m / a for m, a in zip(times["muon"][key], times["adamw"][key], strict=True))


if __name__ == "__main__":
    main()
