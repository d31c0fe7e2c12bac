"""Peak memory of the output layer's next-token loss (forward + backward), plain against chunked, in one run.

One row of ``--tokens`` final hidden states ``[T, d]`` and a head weight ``[V, d]`` (both trainable, a tenth of
the targets ignored) go through ``NextTokenLoss(chunk_size).from_hidden`` and ``backward()``: ``chunk_size 0`` builds
the whole ``[T, V]`` logits (what every stage did before), the chunked loss one chunk of tokens at a time
(:mod:`mm_lightning.ops.linear_cross_entropy`). On a CUDA device the figure is ``torch.cuda.max_memory_allocated``
over the loss. On the CPU each variant runs in a fresh subprocess and the figure is its peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident set just before the loss, i.e. the memory the loss
itself took, allocator overheads included. A variant that would not fit the machine's available memory is not
started: for the plain loss its whole fp32 logits (``T x V x 4`` bytes) are then reported as a lower bound of its peak.

Must hold (issue 16): the chunked peak is at most a quarter of the plain one at 16K tokens and a 128K vocabulary.

Usage::

    python benchmarks/chunked_loss_memory.py --out chunked_loss_memory.json
    python benchmarks/chunked_loss_memory.py --shapes 16384x131072 4096x131072 --d-model 256 --chunk-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from bench_common import available_bytes, resident_bytes

from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, NextTokenLoss

FP32 = 4


def run_variant(tokens: int, vocab: int, d_model: int, chunk_size: int, device: str) -> dict:
    """One loss forward + backward in this process; the memory it took and its time."""
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens, d_model, device=device).requires_grad_()  # [1, T, d]: one row
    weight = torch.randn(vocab, d_model, device=device).mul_(0.02).requires_grad_()  # [V, d]
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    labels[torch.rand(1, tokens, device=device) < 0.1] = IGNORE_INDEX
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    start = time.perf_counter()
    loss = NextTokenLoss(chunk_size).from_hidden(hidden, weight, labels)["loss"]
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"loss": float(loss), "loss_peak_bytes": peak - before, "seconds": seconds,
            "grad_norm": float(weight.grad.norm())}  # fmt: skip


def needed_bytes(tokens: int, vocab: int, d_model: int, chunk_size: int) -> int:
    """A generous estimate: three ``[rows, V]`` fp32 buffers (logits, softmax, their gradient) and the weights."""
    rows = tokens if chunk_size == 0 else min(tokens, chunk_size)
    return 3 * rows * vocab * FP32 + 4 * vocab * d_model * FP32 + 4 * tokens * d_model * FP32


def measure(tokens: int, vocab: int, d_model: int, chunk_size: int, device: str) -> dict:
    """A variant's figures, from a fresh subprocess on the CPU; ``skipped`` when it would not fit."""
    row = {"tokens": tokens, "vocab": vocab, "d_model": d_model, "chunk_size": chunk_size,
           "variant": "chunked" if chunk_size else "plain", "logits_bytes": tokens * vocab * FP32}  # fmt: skip
    if device == "cuda":
        return row | run_variant(tokens, vocab, d_model, chunk_size, device)
    need, free = needed_bytes(tokens, vocab, d_model, chunk_size), int(0.8 * available_bytes())
    if need > free:
        return row | {"skipped": f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB usable here"}
    command = [sys.executable, __file__, "--worker", f"{tokens}x{vocab}", "--d-model", str(d_model),
               "--chunk-size", str(chunk_size)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return row | json.loads(done.stdout.strip().splitlines()[-1])


def compare(rows: list[dict]) -> dict:
    """Chunked peak / plain peak; against the plain logits' size (a lower bound of its peak) when plain was skipped."""
    plain, chunked = rows
    if "skipped" in chunked:
        return {"tokens": plain["tokens"], "vocab": plain["vocab"], "ratio": None, "quarter_holds": None,
                "against": "nothing: the chunked loss did not run"}  # fmt: skip
    measured = "skipped" not in plain
    reference = plain["loss_peak_bytes"] if measured else plain["logits_bytes"]
    ratio = chunked["loss_peak_bytes"] / reference
    summary = {
        "tokens": plain["tokens"],
        "vocab": plain["vocab"],
        "ratio": ratio,
        "quarter_holds": ratio <= 0.25,
        "against": "plain peak, measured" if measured else "plain logits alone (lower bound of its peak)",
    }
    if measured:
        summary["loss_relative_difference"] = abs(chunked["loss"] - plain["loss"]) / abs(plain["loss"])
    return summary


def print_table(rows: list[dict], summaries: list[dict]) -> None:
    print(f"{'tokens':>7} {'vocab':>7} {'variant':>8} {'chunk':>6} {'loss peak':>11} {'seconds':>8} {'loss':>9}")
    for row in rows:
        if "skipped" in row:
            peak, seconds, loss = f">{row['logits_bytes'] / 2**30:.2f} GiB", "-", f"skipped: {row['skipped']}"
        else:
            peak, seconds, loss = (
                f"{row['loss_peak_bytes'] / 2**30:.3f} GiB",
                f"{row['seconds']:.1f}",
                f"{row['loss']:.4f}",
            )
        print(f"{row['tokens']:>7} {row['vocab']:>7} {row['variant']:>8} {row['chunk_size']:>6} {peak:>11} "
              f"{seconds:>8} {loss:>9}")  # fmt: skip
    for s in summaries:
        if s["ratio"] is None:
            continue
        print(f"{s['tokens']} x {s['vocab']}: chunked / plain = {s['ratio']:.3f} ({s['against']}); "
              f"at most a quarter: {'yes' if s['quarter_holds'] else 'NO'}")  # fmt: skip


def machine(device: str) -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "memory_available_gib": round(available_bytes() / 2**30, 1), "device": device}  # fmt: skip
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["16384x131072", "4096x131072", "16384x32768"],
                        help="rows as TOKENSxVOCAB (the first: the issue's 16K tokens, 128K vocabulary)")  # fmt: skip
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="tokens per chunk (the default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default="chunked_loss_memory.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # TOKENSxVOCAB: one variant in this process
    args = parser.parse_args()
    if args.worker:
        tokens, vocab = map(int, args.worker.split("x"))
        print(json.dumps(run_variant(tokens, vocab, args.d_model, args.chunk_size, "cpu")))
        return
    rows, summaries = [], []
    for shape in args.shapes:
        tokens, vocab = map(int, shape.split("x"))
        pair = [measure(tokens, vocab, args.d_model, chunk, args.device) for chunk in (0, args.chunk_size)]
        rows += pair
        summaries.append(compare(pair))
    print_table(rows, summaries)
    method = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS of a fresh subprocess"
    report = {"machine": machine(args.device), "method": method, "command": " ".join(sys.argv), "rows": rows,
              "summaries": summaries}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
