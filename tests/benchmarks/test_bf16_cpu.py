"""``benchmarks/bf16_cpu.py``'s loss-gap arithmetic, by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bf16_cpu  # noqa: E402


def test_smoothed_is_a_trailing_mean():
    assert bf16_cpu.smoothed([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_gaps_use_the_second_half_and_skip_the_validation_at_step_0():
    fp32 = SimpleNamespace(losses=[4.0] * 20, val=[{"step": 0, "loss": 9.0}, {"step": 10, "loss": 2.0}])
    other = SimpleNamespace(losses=[4.0] * 10 + [4.5] * 10, val=[{"step": 0, "loss": 7.0}, {"step": 10, "loss": 2.25}])
    gaps = bf16_cpu.gaps({"fp32": fp32, "bf16": other}, "bf16")
    # smoothed over 10 steps, the second half climbs 0.05, 0.10, ... 0.50: mean 0.275
    assert gaps == {"train_mean_abs": pytest.approx(0.275), "val_max_abs": pytest.approx(0.25)}
