"""The issue-16 benchmark scripts: their counting helpers against hand-computed values, the demo pipeline's stage
configs as they read them, and a smoke run of each script at a tiny shape (slow: each builds demo data or trains)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_common  # noqa: E402
import memory  # noqa: E402
import packing_efficiency  # noqa: E402

from mm_lightning.data.mixture_datamodule import MixtureDataModule  # noqa: E402


def test_efficiency_counts_packed_padded_and_fewest_rows() -> None:
    # items of 3, 5 and 8 positions in 2 rows of 10: 16 used of 20; padded to the longest: 3 x 8 = 24
    assert packing_efficiency.efficiency([3, 5, 8], positions=20, row=10) == (16, 20, 24, 20, 0)
    assert packing_efficiency.efficiency([4, 4], positions=8) == (8, 8, 8, 8, 0)  # no rows: the fewest is as built
    # the gap filler's 4 positions count as non-padding, not as items of the padded layout
    assert packing_efficiency.efficiency([3, 5, 8], positions=20, row=10, filler=4) == (16, 20, 24, 20, 4)


def test_document_lengths_reads_runs_of_seq_ids_row_by_row() -> None:
    seq_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    keep = torch.tensor([[True] * 5 + [False], [True] * 6])  # the last position of row 0 is padding
    assert packing_efficiency.document_lengths(seq_ids, keep) == [2, 3, 1, 5]


def test_summary_shares() -> None:
    summary = packing_efficiency.summarise(90, 100, 180, 90)
    assert (summary["packed_share"], summary["padded_share"], summary["fewest_rows_share"]) == (0.9, 0.5, 1.0)
    filled = packing_efficiency.summarise(90, 100, 180, 90, filler=10)
    assert (filled["packed_share"], filled["padded_share"], filled["filler_share"]) == (1.0, 0.5, 0.1)


def test_merge_overlays_mappings_key_by_key() -> None:
    base = {"data": {"init_args": {"data_path": "a", "seq_len": 256}}, "trainer": {"callbacks": [1]}}
    merged = bench_common.merge(base, {"data": {"init_args": {"data_path": "b"}}, "trainer": {"callbacks": [2]}})
    assert merged == {"data": {"init_args": {"data_path": "b", "seq_len": 256}}, "trainer": {"callbacks": [2]}}
    assert base["data"]["init_args"]["data_path"] == "a"


def test_demo_stages_follow_the_pipeline_and_its_callbacks() -> None:
    stages = bench_common.demo_stages()
    assert list(stages) == ["text", "vit", "align", "joint", "cooldown", "long_context"]
    assert stages["text"]["data"]["init_args"]["data_path"] == "demo:sotu-captions"  # the captions overlay
    assert stages["joint"]["trainer"]["max_steps"] == 270  # the pipeline's override
    joint = bench_common.build_datamodule(stages["joint"])
    assert isinstance(joint, MixtureDataModule)
    assert (joint.share.start, joint.share.end, joint.share.ramp_samples) == (0.9, 0.98, 270 * 40)  # ProgressiveMixing
    assert bench_common.build_datamodule(stages["long_context"]).seq_len == 1024  # RoPEBaseSwitch's seq_len


def test_stages_build_from_presets_without_checkpoints() -> None:
    stage = bench_common.build_stage(bench_common.demo_stages()["joint"])
    assert type(stage).__name__ == "PresetJointStage" and stage.handoff == "weights_only"
    assert stage.llm.config.n_layers == 4  # llm/tiny


def test_memory_variant_flags() -> None:
    assert memory.flags("ac+chunked+fsdp2") == {"ac": True, "chunked": True, "fsdp2": True}
    assert memory.flags("plain") == {"ac": False, "chunked": False, "fsdp2": False}


def run_script(name: str, *args: str, cache: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    env = os.environ | {"MM_LIGHTNING_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_vlm_vs_llm_throughput_smoke(mm_cache: Path, demo_emoji, tmp_path: Path) -> None:
    shape = ["--rows", "1", "--seq-len", "128", "--batches", "2", "--rounds", "1", "--matmul-sizes", "64"]
    report = run_script("vlm_vs_llm_throughput", *shape, "--modes", "sdpa", "xformers", cache=mm_cache,
                        tmp_path=tmp_path)  # fmt: skip
    (sdpa,) = report["modes"]
    assert report["tokens_per_step"] == 128 and 0 < report["vlm_batch"]["image_token_share"] < 1
    assert sdpa["llm"]["tokens_per_s"] > 0 and sdpa["vlm"]["mfu"] > 0 and sdpa["ratio"] > 0
    assert "xformers" in report["skipped"]  # no CPU kernels


@pytest.mark.slow
def test_packing_efficiency_smoke(mm_cache: Path, demo_emoji, tmp_path: Path) -> None:
    report = run_script("packing_efficiency", "--stages", "joint", "--batches", "2", cache=mm_cache, tmp_path=tmp_path)
    rows = report["stages"]["joint"]["mixed rows"]
    assert rows["padded_share"] <= rows["fewest_rows_share"] <= 1  # the samples alone
    assert rows["padded_share"] <= rows["packed_share"] <= 1 and rows["filler_positions"] > 0  # with the gap filler
    assert report["demo_mixture"]["stages"] == ["joint"]


@pytest.mark.slow
def test_data_loading_smoke(mm_cache: Path, demo_emoji, tmp_path: Path) -> None:
    report = run_script("data_loading", "--stages", "joint", "--workers", "0", "--batches", "2", "--steps", "1",
                        cache=mm_cache, tmp_path=tmp_path)  # fmt: skip
    joint = report["stages"]["joint"]
    assert joint["loaders"][0]["samples_per_s"] > 0 and len(joint["step_times_s"]) == 1


@pytest.mark.slow
def test_memory_smoke(tmp_path: Path) -> None:
    report = run_script("memory", "--tokens", "128", "--steps", "1", "--variants", "plain", "ac+chunked+fsdp2",
                        cache=tmp_path, tmp_path=tmp_path)  # fmt: skip
    plain, sharded = report["rows"]
    assert plain["processes"] == 1 and sharded["processes"] == 2, report["rows"]
    assert plain["step_peak_bytes"] > 0 and sharded["step_peak_bytes"] > 0
