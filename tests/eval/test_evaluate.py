"""``mm-lightning evaluate``: held-out perplexity of stage checkpoints on one fixed set of rows, and the copy check."""

import json
import math
import subprocess
import sys

import lightning.pytorch as pl

from mm_lightning.checkpoint import load_backbone, recorded_tokenizer
from mm_lightning.data.text import TextDataModule
from mm_lightning.eval.copy_check import copy_chance
from mm_lightning.eval.perplexity import heldout_perplexity
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 8192}


def test_evaluate_scores_checkpoints_on_the_whole_val_split(tmp_path, demo_sotu):
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO)
    trainer = pl.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "untrained.ckpt")
    cmd = [sys.executable, "-m", "mm_lightning.cli", "evaluate", "--ckpt", str(tmp_path / "untrained.ckpt"),
           "--data", "demo:sotu", "--seq-len", "128"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ppl"] == math.exp(result["loss"]) and abs(result["loss"] - math.log(8192)) < 0.5  # untrained
    data = TextDataModule("demo:sotu", seq_len=128, batch_size=8)
    data.prepare_data()
    data.setup("fit")
    assert result["tokens"] == sum(int(b["labels"].numel()) for b in data.val_dataloader())  # every val row
    again = heldout_perplexity(load_backbone(tmp_path / "untrained.ckpt", "llm").eval(), "demo:sotu", 128)
    assert abs(again["loss"] - result["loss"]) < 1e-9  # the Python API and the command agree
    missing = subprocess.run([*cmd[:5], str(tmp_path / "nope.ckpt"), *cmd[6:]], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_evaluate_runs_the_copy_check_in_the_recorded_vocabulary(tmp_path, tiny_checkpoints):
    """``--copy`` alone (no ``--data``): the copy check of each checkpoint's LLM, text and joint stage alike."""
    paths = [str(tiny_checkpoints[name]) for name in ("text", "joint")]
    cmd = [sys.executable, "-m", "mm_lightning.cli", "evaluate", "--ckpt", *paths, "--copy", "64", "128"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    assert [line["ckpt"] for line in lines] == paths and all("ppl" not in line for line in lines)
    tokenizer = recorded_tokenizer(paths[0])
    for line in lines:
        assert set(line["copy"]) == {"64", "128"} and line["copy_chance"] == copy_chance(tokenizer)
        assert all(0.0 <= score["copy"] <= 1.0 and abs(score["gain"]) < 1.0 for score in line["copy"].values())
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO)  # no data, so no tokenizer recorded
    trainer = pl.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "bare.ckpt")
    bare = subprocess.run([*cmd[:5], str(tmp_path / "bare.ckpt"), "--copy", "64"], capture_output=True, text=True)
    assert bare.returncode == 2 and "records no tokenizer" in bare.stderr and "Traceback" not in bare.stderr
    neither = subprocess.run(cmd[:6], capture_output=True, text=True)
    assert neither.returncode == 2 and "give --data" in neither.stderr
