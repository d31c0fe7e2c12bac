"""The side-by-side benchmarks (benchmarks/alternating.py and its two users): the alternation order, the summary's
ratios against hand-computed values, and a smoke run of each script (slow: they train a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import alternating  # noqa: E402


def test_steps_alternate_with_the_order_flipping_every_round() -> None:
    calls: list[tuple[str, int]] = []
    sides = {name: (lambda index, name=name: calls.append((name, index))) for name in ("a", "b")}
    times = alternating.measure_alternately(sides, warmup=1, rounds=3)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 3), ("b", 3)]
    assert {name: len(steps) for name, steps in times.items()} == {"a": 3, "b": 3}


def test_summary_ratios() -> None:
    summary = alternating.summarise({"slow": [2.0, 6.0, 3.0], "fast": [1.0, 2.0, 2.0]}, "slow", "fast", 10)
    assert summary["median_step_s"] == {"slow": 3.0, "fast": 2.0}
    assert summary["per_s"] == {"slow": 10 / 3, "fast": 5.0}
    assert summary["ratio"] == {"of": "slow / fast", "of_medians": 1.5, "median_per_round": 2.0}  # 2, 3, 1.5


def _run(name: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out)], check=True, env=env)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_packed_attention_smoke(tmp_path: Path) -> None:
    args = ["--threads", "1", "--batch-size", "2", "--seq-len", "128", "--mean-doc-len", "32", "--rounds", "2"]
    result = _run("packed_attention", [*args, "--warmup", "1"], tmp_path / "packed.json")
    assert set(result["median_step_s"]) == {"segmented", "dense"} and result["ratio"]["of"] == "dense / segmented"
    assert 0 < result["used_score_share"] < 1


@pytest.mark.slow
def test_vit_vs_open_clip_smoke(tmp_path: Path) -> None:
    result = _run("vit_vs_open_clip", ["--threads", "1", "--rounds", "1", "--warmup", "0"], tmp_path / "vit.json")
    assert set(result["median_step_s"]) == {"ours", "open_clip"} and result["ratio"]["of"] == "open_clip / ours"
