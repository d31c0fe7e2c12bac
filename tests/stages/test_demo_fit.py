"""The stage-1 demo through the real command: ``mm-lightning fit --config configs/text_pretrain/tiny.yaml``."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.short_pipeline import FEW_COPIES, FEW_PASSKEYS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mm_lightning.checkpoint import load_checkpoint
from mm_lightning.pipeline.spec import load_yaml, set_at

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "text_pretrain" / "tiny.yaml"


@pytest.mark.slow
def test_cli_fit_on_demo_data_learns_and_writes_logs_and_checkpoints(tmp_path, demo_sotu):
    """A shortened tiny run (60 steps of 8 x 128 tokens): validation loss falls well below its starting value."""
    overrides = [
        "--trainer.max_steps=60", "--trainer.val_check_interval=20", "--trainer.limit_val_batches=4",
        "--trainer.num_sanity_val_steps=4",
        "--data.init_args.seq_len=128", "--model.init_args.schedule.total_steps=60",
        "--model.init_args.schedule.warmup_steps=10", "--model.init_args.schedule.decay_steps=20",
    ]  # fmt: skip
    config = load_yaml(CONFIG)  # the stage's config with 4 passkey prompts at one length and a small copy check:
    for key, value in (FEW_PASSKEYS | FEW_COPIES).items():  # its own cost ~10 s a validation; this test is on the loss
        set_at(config, key, value)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", "tiny.yaml", *overrides]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    start = [float(v) for v in re.findall(r"before training 0: val/loss ([\d.]+)", run.stdout)]
    val_losses = [float(v) for v in re.findall(r"step \d+: val/loss ([\d.]+)", run.stdout)]
    assert len(start) == 1 and len(val_losses) == 3, run.stdout[-2000:]
    assert start[0] > 8.5  # ln(8192) = 9.0: the untrained model on the same validation batches
    assert val_losses[-1] < start[0] - 2.0, (start, val_losses)
    assert val_losses[-1] < val_losses[0] - 0.2, val_losses  # still learning after the first 20 steps
    # the progress bar: tqdm's "Epoch 0:", or rich's "Epoch 0" (Lightning takes rich when it is installed, as the
    # test extra's transformers brings it)
    assert re.search(r"Epoch 0\b", run.stdout + run.stderr)

    run_dir = tmp_path / "runs" / "text_pretrain_tiny"
    events = list(run_dir.glob("version_0/events.out.tfevents.*"))
    assert events, "no TensorBoard log"
    logged = EventAccumulator(str(events[0])).Reload().Scalars("val/loss")
    assert [e.step for e in logged] == [0, 20, 40, 60]  # the starting value is on the curve at step 0
    assert logged[0].value == pytest.approx(start[0], abs=1e-4)
    meta = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["mm_lightning"]
    assert meta["global_step"] == 60 and meta["rope_base"] == 50_000.0
    assert meta["tokens_seen"] == 60 * 8 * 128
