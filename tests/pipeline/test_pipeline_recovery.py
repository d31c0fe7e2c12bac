"""A pipeline never gets stuck or trains on garbage: the states a kill can leave, a moved folder, a second
pipeline on the same folder, and NaN, each met through ``mm-lightning pipeline`` on a 4-step text stage.

The on-disk states are those a ``kill -9`` leaves at the awkward moments (built here by hand, so the test is
exact about the moment): the stage's final ``step4.ckpt`` written but ``last.ckpt`` still the step-2 one, and
``last.ckpt`` cut short by a kill during its copy. Every rerun must finish with the weights and final figures of
the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mm_lightning.checkpoint import load_checkpoint
from mm_lightning.run_lock import RunLock

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = {
    "trainer.max_steps": 4,
    "trainer.val_check_interval": 2,
    "trainer.limit_val_batches": 2,
    "trainer.callbacks.StageCheckpoint.init_args.every_n_train_steps": 2,
    "trainer.callbacks.PasskeyEvaluation.init_args.prompts": 2,
    "data.init_args.num_workers": 0,
}


def write_pipeline(folder: Path, **extra: object) -> Path:
    spec = {
        "name": "recovery",
        "run_dir": str(folder / "run"),
        "stages": [{"name": "text", "config": str(ROOT / "configs/text_pretrain/tiny.yaml"),
                    "overrides": OVERRIDES | extra, "metric": "val/ppl"}],
    }  # fmt: skip
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(pipeline: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mm_lightning.cli", "pipeline", "--config", str(pipeline), *args]
    return subprocess.run(command, cwd=pipeline.parent, capture_output=True, text=True, timeout=600)


def entry(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][0]


def as_if_killed(run_dir: Path) -> None:
    """The manifest as a kill during the stage leaves it: the stage still ``running``."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"][0]["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_sotu) -> Path:
    folder = tmp_path_factory.mktemp("recovery_reference")
    result = run(write_pipeline(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    ours, theirs = entry(run_dir), entry(reference)
    assert ours["status"] == "finished" and ours["global_step"] == theirs["global_step"] == 4
    for name, value in theirs["final_metrics"].items():
        assert ours["final_metrics"][name] == pytest.approx(value, rel=1e-5), name
    mine = load_checkpoint(run_dir / "text" / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in load_checkpoint(reference / "text" / "checkpoints" / "last.ckpt")["state_dict"].items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=0, msg=key)
    assert not list((run_dir / "text" / "checkpoints").glob("*-v*.ckpt"))  # never a versioned duplicate


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["last_is_older", "last_is_truncated", "last_is_missing"])
def test_a_stage_killed_after_its_final_step_checkpoint_finishes_on_the_rerun(
    tmp_path: Path, reference: Path, damage: str
) -> None:
    shutil.copytree(reference, tmp_path / "run")
    checkpoints = tmp_path / "run" / "text" / "checkpoints"
    last = checkpoints / "last.ckpt"
    if damage == "last_is_older":  # killed between writing step4.ckpt and last.ckpt
        shutil.copy(checkpoints / "step2.ckpt", last)
    elif damage == "last_is_truncated":  # killed while last.ckpt was copied over
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:
        last.unlink()
    (tmp_path / "run" / "text" / "checkpoints" / f".last.ckpt.tmp-{2**22 + 7}").write_bytes(b"orphan")
    as_if_killed(tmp_path / "run")
    pipeline = write_pipeline(tmp_path)

    rerun = run(pipeline)

    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "nothing left to train; running the final validation" in rerun.stdout + rerun.stderr
    assert_same_run(tmp_path / "run", reference)
    assert not list(checkpoints.glob(".*.tmp-*"))  # the dead writer's temporary file is gone
    again = run(pipeline)  # and it stays finished
    assert again.returncode == 0 and "skip (finished at step 4)" in again.stdout


@pytest.mark.slow
def test_a_stopped_run_folder_that_was_moved_resumes_in_its_new_place(tmp_path: Path, reference: Path) -> None:
    shutil.copytree(reference, tmp_path / "old")
    checkpoints = tmp_path / "old" / "text" / "checkpoints"
    (checkpoints / "last.ckpt").unlink()
    (checkpoints / "step4.ckpt").unlink()
    shutil.copy(checkpoints / "step2.ckpt", checkpoints / "last.ckpt")  # stopped at step 2
    as_if_killed(tmp_path / "old")
    shutil.move(tmp_path / "old", tmp_path / "run")

    rerun = run(write_pipeline(tmp_path))

    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resume (from last.ckpt, step 2)" in rerun.stdout
    assert_same_run(tmp_path / "run", reference)


@pytest.mark.slow
def test_a_second_pipeline_on_a_busy_run_folder_stops_and_names_the_holder(tmp_path: Path, demo_sotu) -> None:
    pipeline = write_pipeline(tmp_path)
    with RunLock(tmp_path / "run"):
        busy = run(pipeline)
    assert busy.returncode == 2
    assert f"is in use by process {os.getpid()}" in busy.stderr and "Traceback" not in busy.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()  # it touched nothing


@pytest.mark.slow
def test_a_nan_loss_stops_the_stage_and_the_pipeline_never_marks_it_finished(tmp_path: Path, demo_sotu) -> None:
    result = run(write_pipeline(tmp_path, **{"model.init_args.schedule.peak_lr": 1.0e6}))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "the gradients became NaN or infinite" in result.stderr and "Traceback" not in result.stderr
    assert "stage 'text' stopped on a NaN or infinite loss" in result.stderr
    assert entry(tmp_path / "run")["status"] == "stopped"
    for path in (tmp_path / "run" / "text" / "checkpoints").glob("*.ckpt"):
        for value in load_checkpoint(path)["state_dict"].values():
            assert not isinstance(value, torch.Tensor) or torch.isfinite(value).all(), path
