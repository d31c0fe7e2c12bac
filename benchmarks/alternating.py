"""Shared by the side-by-side benchmarks: steps of two sides timed alternately in one process, and their summary.

Alternating single steps (A, B, B, A, ...) after warm-up puts both sides under the same machine load, so their
ratio holds on a shared, drifting machine even when the absolute times do not.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import machine_info


def measure_alternately(sides: dict[str, Callable[[int], object]], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Time one step of each side per round, the order flipping every round, after ``warmup`` steps of each.

    Args:
        sides: name -> a step, called with its index (warm-up steps first; both sides get the same indices).
        warmup: unmeasured steps of each side.
        rounds: measured rounds.

    Returns:
        Per side, its ``rounds`` step times in seconds.
    """
    names = list(sides)
    for index in range(warmup):
        for name in names:
            sides[name](index)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            sides[name](warmup + round_index)
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times: dict[str, list[float]], baseline: str, subject: str, items_per_step: int) -> dict[str, Any]:
    """The machine, medians, items/s, and ``baseline / subject`` as a ratio of medians and as the median of the
    per-round ratios (each round's two steps ran back to back, under the same load)."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    paired = statistics.median(b / s for b, s in zip(times[baseline], times[subject]))
    return {
        **machine_info(),
        "rounds": len(times[subject]),
        "median_step_s": medians,
        "per_s": {name: items_per_step / median for name, median in medians.items()},
        "step_times_s": times,
        "ratio": {"of": f"{baseline} / {subject}", "of_medians": medians[baseline] / medians[subject],
                  "median_per_round": paired},
    }  # fmt: skip


def report(result: dict[str, Any], header: str, label: str, unit: str, out: Path | None) -> None:
    """Print ``header``, a row per side (median, min and max step, ``unit``/s) and the ratio; JSON to ``out``."""
    print(f"\n{header}, torch {result['torch']}, {result['torch_threads']} threads")
    print(f"{label:<10} {'median step (s)':>16} {'min (s)':>9} {'max (s)':>9} {unit + '/s':>9}")
    for name, median in result["median_step_s"].items():
        steps = result["step_times_s"][name]
        print(f"{name:<10} {median:>16.3f} {min(steps):>9.3f} {max(steps):>9.3f} {result['per_s'][name]:>9.1f}")
    ratio = result["ratio"]
    print(f"{ratio['of']} = {ratio['of_medians']:.3f} (ratio of medians), {ratio['median_per_round']:.3f} "
          f"(median per-round ratio); > 1: {ratio['of'].split(' / ')[1]} is faster")  # fmt: skip
    if out:
        out.write_text(json.dumps(result, indent=2))
