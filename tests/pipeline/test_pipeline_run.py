"""The demo pipeline end to end through ``mm-lightning pipeline``, with every stage cut to a few steps.

One run goes through uninterrupted; another, given that run's stages 1-2b, is killed during joint pre-training
(recipe stage 3) and run again with the same command: it must skip the finished stages, resume the stopped one
from its checkpoint and end with the same final figures and weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers.short_pipeline import ROOT, run_pipeline_command, seed_finished_stages, short_demo_pipeline

from mm_lightning.checkpoint import load_checkpoint


def stage_entries(run_dir: Path) -> dict[str, dict]:
    return {entry["name"]: entry for entry in json.loads((run_dir / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def uninterrupted(short_demo_run: Path) -> Path:
    """One uninterrupted run of the shortened demo pipeline (shared with the notebook test); its run folder."""
    return short_demo_run


@pytest.mark.slow
def test_the_demo_pipeline_runs_every_stage_and_writes_manifest_logs_and_report(uninterrupted: Path) -> None:
    stages = stage_entries(uninterrupted)
    assert list(stages) == ["text", "vit", "align", "joint", "cooldown", "long_context"]
    stdout = (uninterrupted.parent / "stdout.txt").read_text()
    assert "stage 4/6 joint: joint pre-training (recipe stage 3)" in stdout
    assert "· beside vit on " in stdout and "Trainer.fit" in (uninterrupted / "vit" / "output.log").read_text()
    for name, entry in stages.items():
        assert entry["status"] == "finished" and entry["attempts"] == 1, (name, entry)
        assert Path(entry["checkpoint"]).is_file() and Path(entry["resolved_config"]).is_file()
        assert list(Path(entry["log_dir"]).glob("events.out.tfevents.*")), name
        assert entry["wall_time_s"] > 0 and entry["tokens"] > 0 and entry["final_metrics"], name
        assert entry["metric"]["start"] is not None and entry["metric"]["final"] is not None, name
    steps = {name: (entry["global_step_start"], entry["global_step"]) for name, entry in stages.items()}
    assert steps == {"text": (0, 4), "vit": (0, 4), "align": (0, 4), "joint": (4, 10), "cooldown": (10, 14),
                     "long_context": (14, 16)}  # fmt: skip
    checkpoints = {name: sorted(p.name for p in Path(entry["checkpoint"]).parent.glob("step*.ckpt")) for name, entry in
                   stages.items()}  # fmt: skip
    assert checkpoints["text"] == ["step2.ckpt", "step4.ckpt"]  # named by the global step they hold
    assert checkpoints["joint"] == ["step10.ckpt", "step6.ckpt", "step8.ckpt"]
    assert stages["long_context"]["rope_base"] == 800_000 and stages["long_context"]["seq_len"] == 1024
    assert stages["text"]["rope_base"] == 50_000 and stages["vit"]["rope_base"] is None
    manifest = json.loads((uninterrupted / "manifest.json").read_text())  # text and vit side by side: less in all
    assert 0 < manifest["wall_time_s"] < sum(entry["wall_time_s"] for entry in stages.values())
    report = uninterrupted / "report.png"
    assert report.stat().st_size > 20_000 and report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (uninterrupted / "summary.txt").read_text()
    assert "joint pre-training" in summary and "passkey" in summary


@pytest.mark.slow
def test_a_pipeline_killed_in_stage_3_resumes_and_ends_like_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: Path
) -> None:
    pipeline, run_dir = short_demo_pipeline(tmp_path), tmp_path / "run"
    seed_finished_stages(uninterrupted, run_dir, ["text", "vit", "align"])  # stages 1-2b as that run left them
    killed = run_pipeline_command(pipeline, kill=True)
    assert killed.returncode != 0
    headers = [line for line in killed.stdout.splitlines() if line.startswith("=== stage ")]
    for index, name in enumerate(("text", "vit", "align"), start=1):  # the seeded stages count as done
        assert any(line.startswith(f"=== stage {index}/6 {name}:") and line.endswith("skip (finished at step 4)")
                   for line in headers), headers  # fmt: skip
    before = stage_entries(run_dir)
    assert [before[name]["status"] for name in ("text", "vit", "align", "joint")] == [
        "finished", "finished", "finished", "running"]  # fmt: skip
    finished_files = {name: Path(before[name]["checkpoint"]).stat().st_mtime_ns for name in ("text", "vit", "align")}

    rerun = run_pipeline_command(pipeline)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    header = next(line for line in rerun.stdout.splitlines() if "joint pre-training (recipe stage 3)" in line)
    assert "resume (from " in header, header
    after, reference = stage_entries(run_dir), stage_entries(uninterrupted)
    for name in ("text", "vit", "align"):  # not redone
        assert (
            after[name]["attempts"] == 1 and Path(after[name]["checkpoint"]).stat().st_mtime_ns == finished_files[name]
        )
    assert after["joint"]["attempts"] == 2
    for name, entry in after.items():
        assert entry["status"] == "finished", name
        assert entry["global_step"] == reference[name]["global_step"], name
        for metric, value in reference[name]["final_metrics"].items():
            assert entry["final_metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, metric)
    ours = load_checkpoint(after["long_context"]["checkpoint"])["state_dict"]
    theirs = load_checkpoint(reference["long_context"]["checkpoint"])["state_dict"]
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_ctrl_c_stops_the_stage_and_the_pipeline_marks_it_stopped(tmp_path: Path, demo_sotu) -> None:
    """SIGINT to the foreground process group (what Ctrl-C sends): exit 130, the stage recorded as stopped."""
    spec = {
        "name": "interrupt",
        "run_dir": str(tmp_path / "run"),
        "stages": [{"name": "text", "config": str(ROOT / "configs/text_pretrain/tiny.yaml"), "overrides": {
            "trainer.max_steps": 5000, "trainer.val_check_interval": 1000, "trainer.num_sanity_val_steps": 0}}],
    }  # fmt: skip
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "mm_lightning.cli", "pipeline", "--config", str(pipeline)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    events = tmp_path / "run" / "text" / "logs"
    deadline = time.monotonic() + 300
    while not list(events.glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside the training loop
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "stage 'text' was interrupted; run the same command again" in stderr
    entry = stage_entries(tmp_path / "run")["text"]
    assert entry["status"] == "stopped" and entry["problem"] == "was interrupted"
