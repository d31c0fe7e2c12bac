"""Stage 1 (text pre-training): FSDP2 == single process, checkpoints, optimizers."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from mm_lightning.checkpoint import CheckpointError, load_backbone, load_checkpoint
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 256}
MM_LIGHTNING = [sys.executable, "-m", "mm_lightning.cli"]


def micro_stage(**kwargs) -> TextPretrainStage:
    schedule = LRSchedule(peak_lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=20)
    return TextPretrainStage(llm="tiny", llm_overrides=MICRO, schedule=schedule, **kwargs)


def quick_trainer(tmp_path: Path, max_steps: int, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


def train_losses(metrics_csv: Path) -> list[float]:
    with open(metrics_csv) as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_fsdp2_on_two_cpu_processes_matches_single_process(tmp_path):
    """Same stage module, same data; only the config differs: FSDP2 over gloo gives the same losses."""
    base = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 6, "limit_val_batches": 0, "log_every_n_steps": 1,
            "enable_checkpointing": False, "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "single"), "name": ""}},
        },
        "model": {"class_path": "mm_lightning.stages.TextPretrainStage",
                  "init_args": {"llm": "tiny", "llm_overrides": MICRO,
                                "schedule": {"peak_lr": 1e-2, "warmup_steps": 1, "total_steps": 6}}},
        "data": {"class_path": "mm_lightning.data.synthetic.SyntheticTextDataModule",
                 "init_args": {"vocab_size": 256, "seq_len": 32, "batch_size": 8, "num_rows": 64, "mean_doc_len": 8}},
    }  # fmt: skip
    fsdp = {
        "trainer": {
            "devices": 2,
            "strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                         "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}},
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "fsdp"), "name": ""}},
        },
        "data": {"init_args": {"batch_size": 4}},  # 2 processes x 4 rows = the single process's 8 rows
    }  # fmt: skip
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(fsdp))
    for extra in ([], ["--config", str(tmp_path / "fsdp.yaml")]):
        cmd = [*MM_LIGHTNING, "fit", "--config", str(tmp_path / "base.yaml"), *extra]
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    single = train_losses(tmp_path / "single" / "version_0" / "metrics.csv")
    sharded = train_losses(tmp_path / "fsdp" / "version_0" / "metrics.csv")
    assert len(single) == len(sharded) == 6
    assert single[-1] < single[0] - 0.05, f"training did not move the loss: {single}"
    assert sharded == pytest.approx(single, rel=1e-4, abs=1e-4)


def test_checkpoint_reloads_in_a_fresh_process_with_identical_logits(tmp_path):
    pl.seed_everything(0)
    stage = micro_stage()
    trainer = quick_trainer(tmp_path, max_steps=3)
    trainer.fit(stage, SyntheticTextDataModule(vocab_size=256, seq_len=16, batch_size=4, num_rows=32))
    stage.llm.set_rope_base(123_456)  # non-default state must travel too
    ckpt = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)

    input_ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.save(input_ids, tmp_path / "input_ids.pt")
    with torch.no_grad():
        expected = stage.llm.eval()(input_ids)
    code = (
        "import sys, torch; from mm_lightning.checkpoint import load_backbone;"
        "d = sys.argv[1]; llm = load_backbone(d + '/stage1.ckpt', 'llm').eval();"
        "ids = torch.load(d + '/input_ids.pt', weights_only=True);"
        "torch.save(llm(ids).detach(), d + '/logits.pt'); print(llm.rope_base)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.strip()) == 123_456
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt", weights_only=True), expected, rtol=0, atol=0)

    meta = load_checkpoint(ckpt)["mm_lightning"]
    assert meta["global_step"] == 3 and meta["rope_base"] == 123_456 and meta["stage"] == "TextPretrainStage"
    assert meta["backbones"]["llm"]["n_layers"] == 2 and meta["schedule"]["peak_lr"] == 1e-2
    assert meta["tokens_seen"] == 3 * 4 * 16
    json.dumps(meta)  # plain data only


def test_loading_the_wrong_thing_names_the_keys(tmp_path):
    stage = micro_stage()
    trainer = quick_trainer(tmp_path, max_steps=1)
    trainer.fit(stage, SyntheticTextDataModule(vocab_size=256, seq_len=16, batch_size=2, num_rows=8))
    ckpt = tmp_path / "s.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="records no 'vit' backbone; it has: llm"):
        load_backbone(ckpt, "vit")
    with pytest.raises(CheckpointError, match=r"missing keys \[.*blocks\.0\.attn\.qkv\.weight"):
        load_backbone(ckpt, "llm", prefix="nothing.")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "missing.ckpt", "llm")


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_both_optimizers_train_and_resume(tmp_path, name):
    pl.seed_everything(0)
    stage = micro_stage(optimizer=OptimizerConfig(name=name))
    # a learnable signal: few distinct tokens, long documents
    data = SyntheticTextDataModule(vocab_size=8, seq_len=32, batch_size=4, num_rows=80, mean_doc_len=64)
    trainer = quick_trainer(tmp_path, max_steps=20, limit_val_batches=2, val_check_interval=20)
    trainer.fit(stage, data)
    assert trainer.callback_metrics["val/loss"] < 2.3  # log(7) = 1.95 is the floor; ln(256) = 5.5 at start
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = quick_trainer(tmp_path, max_steps=22)
    resumed.fit(micro_stage(optimizer=OptimizerConfig(name=name)), data, ckpt_path=ckpt)
    assert resumed.global_step == 22
