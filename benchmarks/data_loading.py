"""Data loading speed of each demo stage's datamodule with 0, 1 and 2 workers, against its stage's training step.

Every stage of ``configs/pipelines/demo.yaml`` gets its real datamodule from its stage config (with the data changes
its callbacks make, see ``bench_common.build_datamodule``) on the ``demo:`` data. For each worker count the script
builds the training loader afresh, takes its first batch (worker start-up and the first shard reads: reported apart
as ``first batch``) and times the next ``--batches``: batches/s and samples/s (a sample is a text row in stage 1, an
image with its caption in stages 2a/2b, a mixture sample in the joint stages).

The step rate is the stage's own: its real stage module (``bench_common.build_stage``: the stage config's model,
randomly initialised registry presets in place of the checkpoints it would inherit) trains under a Lightning
``Trainer`` on ``--steps`` + 1 batches of the same loader, loaded beforehand (so the step excludes loading); the first
step is warm-up, the rest are timed from one ``on_train_batch_end`` to the next. ``headroom`` = loader samples/s /
step samples/s; the target (issue 16) is at least 3x at the worker count the stage config sets. The loader and the
steps are timed apart, one after the other: on a machine with few cores, workers share them with training.

Usage::

    python benchmarks/data_loading.py --threads 1 --out data_loading.json
    python benchmarks/data_loading.py --stages text joint --workers 0 2 --batches 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from bench_common import build_datamodule, build_stage, demo_stages, fit_step_times, machine_info, print_table

TARGET = 3.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", help="demo stages to measure (default: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader (after the first)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per stage (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training steps")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def samples_in(batch: dict[str, Any]) -> int:
    """Samples of a batch: mixture samples, images (image-text), or rows (text)."""
    for key in ("sample_tokens", "grid_hw"):
        if batch.get(key) is not None:
            return int(batch[key].shape[0])
    return int(batch["input_ids"].shape[0])


def time_loader(data: Any, workers: int, count: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Loader speed with ``workers`` workers over ``count`` batches after the first; and the batches read."""
    data.num_workers = workers
    start = time.perf_counter()
    loader = iter(data.train_dataloader())
    batches = [next(loader)]
    first = time.perf_counter() - start
    start = time.perf_counter()
    batches += [next(loader) for _ in range(count)]
    seconds = time.perf_counter() - start
    del loader  # stops its workers
    samples = sum(samples_in(batch) for batch in batches[1:])
    rates = {"workers": workers, "first_batch_s": first, "seconds": seconds, "batches_per_s": count / seconds,
             "samples_per_s": samples / seconds, "samples_per_batch": samples / count}  # fmt: skip
    return rates, batches


def measure_stage(name: str, config: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Loader rates for each worker count and the stage's step rate on the same batches."""
    data = build_datamodule(config)
    configured = data.num_workers
    data.prepare_data()
    data.setup("fit")
    loaders, batches = [], []
    for workers in args.workers:
        rates, read = time_loader(data, workers, max(args.batches, args.steps + 1))
        loaders.append(rates)
        batches = batches or read
    stage = build_stage(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(LRSchedulerResume|total_steps|warmup).*")
        steps = fit_step_times(stage, batches[: args.steps + 1])
    step = statistics.median(steps)
    samples = statistics.mean(samples_in(batch) for batch in batches[1 : args.steps + 1])
    step_rate = samples / step
    for rates in loaders:
        rates["headroom"] = rates["samples_per_s"] / step_rate
    at_config = next((r for r in loaders if r["workers"] == configured), None)
    return {"datamodule": type(data).__name__, "configured_workers": configured, "loaders": loaders,
            "step_times_s": steps, "median_step_s": step, "step_samples_per_s": step_rate,
            "step_samples_per_batch": samples, "target": TARGET,
            "holds": None if at_config is None else at_config["headroom"] >= TARGET}  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    stages = demo_stages()
    results = {name: measure_stage(name, stages[name], args) for name in args.stages or list(stages)}
    rows = []
    for name, result in results.items():
        for rates in result["loaders"]:
            mark = " (config)" if rates["workers"] == result["configured_workers"] else ""
            rows.append((name, result["datamodule"], f"{rates['workers']}{mark}", f"{rates['first_batch_s']:.2f}",
                         f"{rates['batches_per_s']:.1f}", f"{rates['samples_per_s']:.0f}",
                         f"{result['median_step_s'] * 1e3:.0f}", f"{result['step_samples_per_s']:.0f}",
                         f"{rates['headroom']:.1f}x"))  # fmt: skip
    print(f"\ndata loading of the demo stages, {args.batches} batches per loader, {args.threads} training thread(s)")
    print_table(["stage", "datamodule", "workers", "first batch s", "batches/s", "samples/s", "step ms",
                 "step samples/s", "headroom"], rows)  # fmt: skip
    for name, result in results.items():
        verdict = {None: "not measured", True: "holds", False: "FAILS"}[result["holds"]]
        print(f"{name}: at its configured {result['configured_workers']} workers, >= {TARGET:.0f}x: {verdict}")
    report = {"machine": machine_info(), "command": " ".join(sys.argv), "stages": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
