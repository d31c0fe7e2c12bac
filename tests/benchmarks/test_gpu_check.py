"""``benchmarks/gpu_check.py`` without a GPU: its plan fits the lent GPU's time, a failing or slow section is reported
and the next one runs, each section runs in a process of its own, and its CPU-safe parts (shapes, VLM rows)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402

from mm_lightning.models.registry import get_preset  # noqa: E402
from mm_lightning.tokenizer import IMAGE_ID  # noqa: E402


def test_dry_run_lists_every_default_section_with_its_budget(capsys):
    gpu_check.main(["--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(gpu_check.DEFAULT_SECTIONS)
    for line, name in zip(lines, gpu_check.DEFAULT_SECTIONS):
        assert f"{gpu_check.SECTIONS[name].budget_s} s" in line
    assert lines[-1].split()[:2] == [
        "total",
        str(sum(gpu_check.SECTIONS[n].budget_s for n in gpu_check.DEFAULT_SECTIONS)),
    ]


def test_the_default_plan_fits_in_twelve_minutes():
    args = gpu_check.parse_args([])
    total = sum(section.budget_s for _, section in gpu_check.plan(args))
    assert total <= args.budget <= 12 * 60 - 30  # the rest: starting Python, the report
    assert {"llm", "llm-compiled", "vlm", "vlm-compiled", "long-128k", "muon-vs-adamw", "matmul"} <= set(args.sections)


def test_a_failing_section_is_reported_and_the_next_one_runs():
    def run(name: str, timeout: float) -> dict:
        if name == "llm":
            raise TimeoutError("over its 75 s budget")
        return {"tokens_per_s": 1.0, "model_tflops": 10.0} if name != "matmul" else {"bf16_tflops": 40.0}

    sections = gpu_check.plan(gpu_check.parse_args(["--sections", "matmul", "llm", "vlm"]))
    saved = []
    results = gpu_check.run_sections(sections, run, budget=600, save=lambda r: saved.append(dict(r)))
    assert [results[n]["status"] for n in ("matmul", "llm", "vlm")] == ["ok", "failed", "ok"]
    assert "TimeoutError: over its 75 s budget" in results["llm"]["error"]
    assert len(saved) == 3  # written after every section
    gpu_check.add_mfu(results)
    assert results["vlm"]["mfu"] == pytest.approx(0.25)


def test_sections_past_the_run_budget_are_skipped():
    sections = gpu_check.plan(gpu_check.parse_args(["--sections", "matmul", "long-128k"]))
    results = gpu_check.run_sections(sections, lambda name, timeout: {}, budget=100)
    assert (results["matmul"]["status"], results["long-128k"]["status"]) == ("ok", "skipped")


def test_a_section_runs_in_its_own_process_and_its_failure_comes_back():
    with pytest.raises(RuntimeError, match="exit code 1.*needs a CUDA GPU"):
        gpu_check.run_in_subprocess("matmul", 120, [])  # the child has no GPU here


def test_the_long_row_follows_the_128k_config():
    shape = gpu_check.long_context_shape()
    assert shape == {"seq_len": 131072, "rope_base": 800000.0, "activation_checkpointing": True, "compile": True,
                     "loss_chunk_size": 1024, "rows": 1}  # fmt: skip


def test_vlm_rows_are_full_and_their_images_fit_the_vit():
    vit = get_preset("vit", "tiny")
    batch = gpu_check.vlm_rows(3, 512, vit, merge=2, seed=0, vocab=8192)
    assert batch["input_ids"].shape == (3, 512) and int(batch["sample_tokens"].sum()) == 3 * 512
    grids = batch["grid_hw"]
    assert bool((grids.prod(1) <= vit.max_patches).all()) and bool((grids % 2 == 0).all())
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == int(grids.prod(1).sum()) // 4  # 2x2 patches a token
    rng = random.Random(0)
    assert all(16 <= side <= 36 for _ in range(50) for side in gpu_check.image_grid(rng, 1024, 2))


@pytest.mark.slow
def test_the_training_sections_run_on_the_cpu_at_tiny_presets(tmp_path):
    """The plumbing of llm, vlm, long-128k and muon-vs-adamw end to end (bf16 autocast on the CPU, tiny shapes)."""
    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--device", "cpu", "--llm", "tiny", "--vision", "tiny", "--seq-len", "128", "--batch", "2",
                    "--steps", "2", "--warmup", "1", "--long-seq-len", "256", "--long-steps", "1", "--sections", "llm",
                    "vlm", "long-128k", "muon-vs-adamw", "--out", str(out)])  # fmt: skip
    sections = json.loads(out.read_text())["sections"]
    assert {name: result["status"] for name, result in sections.items()} == dict.fromkeys(sections, "ok"), sections
    assert sections["long-128k"]["seq_len"] == 256 and sections["vlm"]["image_token_share"] > 0.2
    assert sections["muon-vs-adamw"]["muon_over_adamw_step"] > 0
