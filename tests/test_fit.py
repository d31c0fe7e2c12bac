"""``mm-lightning fit``/``validate`` on a user's own run folder: the config decides the model, a checkpoint that
does not fit is refused in one line, an earlier run is never overwritten, and ``validate`` keeps the run's files."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ["--config", str(ROOT / "configs/text_pretrain/tiny.yaml")]
SHORT = [
    "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
    "--trainer.logger.init_args.version", "0", "--data.init_args.num_workers", "0",
]  # fmt: skip
CHECKPOINTS = Path("runs/text_pretrain_tiny/checkpoints")
LOGS = Path("runs/text_pretrain_tiny/version_0")


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mm_lightning.cli", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if "mm-lightning fit: error:" in line)
    for fragment in fragments:
        assert fragment in line, line


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_sotu) -> Path:
    folder = tmp_path_factory.mktemp("fit_run")
    result = cli(folder, "fit", *TEXT, *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / CHECKPOINTS / "last.ckpt").is_file()
    return folder


@pytest.mark.slow
def test_a_fresh_run_is_refused_where_an_earlier_runs_checkpoints_lie(trained: Path) -> None:
    before = (trained / CHECKPOINTS / "last.ckpt").stat().st_mtime_ns
    result = cli(trained, "fit", *TEXT, *SHORT)
    assert_one_line_error(result, "already holds checkpoints of an earlier run", "--ckpt_path")
    assert (trained / CHECKPOINTS / "last.ckpt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_checkpoint_of_another_stage_or_with_another_schedule_is_refused(trained: Path) -> None:
    last = str(CHECKPOINTS / "last.ckpt")
    vit = cli(trained, "fit", "--config", str(ROOT / "configs/vit_coca/tiny.yaml"), "--ckpt_path", last)
    assert_one_line_error(vit, "is a TextPretrainStage checkpoint", "builds a ViTCoCaStage")
    lr = cli(trained, "fit", *TEXT, *SHORT, "--trainer.max_steps", "3", "--ckpt_path", last,
             "--model.init_args.schedule.peak_lr", "0.01")  # fmt: skip
    assert_one_line_error(lr, "schedule.peak_lr 0.003 there, 0.01 here")
    wider = cli(trained, "fit", *TEXT, *SHORT, "--ckpt_path", last, "--model.init_args.llm_overrides", "{n_layers: 2}")
    assert_one_line_error(wider, "llm.n_layers 4 there, 2 here")


@pytest.mark.slow
def test_unreadable_checkpoints_are_one_line_errors(trained: Path, tmp_path: Path) -> None:
    whole = (trained / CHECKPOINTS / "last.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickled.ckpt")  # an object a safe load refuses
    for name, fragment in [("truncated", "cannot be read"), ("empty", "is empty"), ("missing", "does not exist"),
                           ("pickled", "holds Python objects")]:  # fmt: skip
        result = cli(trained, "fit", *TEXT, *SHORT, "--ckpt_path", str(tmp_path / f"{name}.ckpt"))
        assert_one_line_error(result, fragment)


@pytest.mark.slow
def test_validate_logs_beside_the_run_and_keeps_its_config_and_events(trained: Path) -> None:
    config, events = trained / LOGS / "config.yaml", sorted((trained / LOGS).glob("events.out.tfevents.*"))
    kept = config.read_text()
    result = cli(trained, "validate", *TEXT, *SHORT, "--ckpt_path", str(CHECKPOINTS / "last.ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert config.read_text() == kept
    assert sorted((trained / LOGS).glob("events.out.tfevents.*")) == events
    assert list((trained / LOGS / "validate").glob("events.out.tfevents.*"))
