"""Lightning's conventions on every stage: ``Stage.load_from_checkpoint`` with no Trainer (and no input checkpoints),
and ``mm-lightning test`` / ``predict`` on the tiny configs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers.tiny_checkpoints import STAGES, image_text, mixture

from mm_lightning.callbacks import PredictionWriter
from mm_lightning.checkpoint import load_checkpoint
from mm_lightning.data import TextDataModule
from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import JointStage, TextPretrainStage, ViTCoCaStage
from mm_lightning.tokenizer import IMAGE_ID

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHORT = LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=3)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints) -> dict[str, Path]:
    return tiny_checkpoints


def outputs(stage: pl.LightningModule, text_batch: dict, image_batch: dict) -> torch.Tensor:
    """A forward pass of the stage's model: logits of text, image embeddings, or captioning logits of the VLM."""
    with torch.no_grad():
        if isinstance(stage, TextPretrainStage):
            return stage(text_batch)
        if isinstance(stage, ViTCoCaStage):
            return stage(image_batch)["image_embed"]
        rows = caption_rows(image_batch, stage.projector.num_tokens, IMAGE_ID)
        return stage.vlm(rows["input_ids"], image_batch["patches"], image_batch["grid_hw"], image_batch["seq_ids"],
                         position_ids=rows["position_ids"], seq_ids=rows["seq_ids"])  # fmt: skip


@pytest.mark.parametrize("name", list(STAGES))
def test_load_from_checkpoint_needs_no_trainer_and_no_input_checkpoints(tiny, name, one_thread):
    stage = STAGES[name].load_from_checkpoint(tiny[name]).eval()
    assert stage._trainer is None
    assert isinstance(stage.optimizer_config, OptimizerConfig) and isinstance(stage.schedule, LRSchedule)
    assert stage.schedule == SHORT and stage.optimizer_config.betas == (0.9, 0.95)
    saved = load_checkpoint(tiny[name])["state_dict"]
    own = stage.state_dict()
    assert set(own) == set(saved)
    for key, value in saved.items():
        assert torch.equal(own[key], value) if torch.is_tensor(value) else own[key] == value, key

    text_data, images = TextDataModule(seq_len=32, batch_size=2), image_text(batch_size=2)
    for data in (text_data, images):
        data.setup("predict")
    text_batch, image_batch = next(iter(text_data.predict_dataloader())), next(iter(images.predict_dataloader()))
    rebuilt = STAGES[name].load_from_checkpoint(tiny[name]).eval()  # the same weights give the same outputs
    assert torch.isfinite(outputs(stage, text_batch, image_batch)).all()
    torch.testing.assert_close(outputs(stage, text_batch, image_batch), outputs(rebuilt, text_batch, image_batch))


def test_joint_stage_tests_and_predicts_captions(tiny, tmp_path, one_thread):
    """``Trainer.test`` reports the validation metrics as ``test/...``; ``predict`` writes one record per document."""
    stage = JointStage.load_from_checkpoint(tiny["joint"])
    writer = PredictionWriter(str(tmp_path / "joint.jsonl"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[writer], default_root_dir=tmp_path)  # fmt: skip
    trainer.test(stage, mixture(), verbose=False)
    # each metric names its validation set (the mixture's sources "text" and "scenes")
    assert {"test/text_loss_text", "test/text_ppl_text", "test/multimodal_loss_scenes"} <= set(trainer.callback_metrics)
    trainer.predict(stage, mixture(), return_predictions=False)
    records = [json.loads(line) for line in (tmp_path / "joint.jsonl").read_text().splitlines()]
    assert {r["group"] for r in records} == {"text", "multimodal"}
    scenes = [r for r in records if r["group"] == "multimodal"]
    assert len(scenes) == 3 and all(r["text"].startswith("<image>") and len(r["captions"]) == 1 for r in scenes)
    assert all(r["tokens"] > 0 and r["ppl"] == pytest.approx(torch.tensor(r["loss"]).exp().item()) for r in records)


def run_cli(tmp_path: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "mm_lightning.cli", *args, "--data.init_args.num_workers", "0"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # micro models decode far faster on one thread of a busy CPU
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def cli_args(tiny: dict[str, Path], name: str) -> list[str]:
    """The tiny config of stage ``name`` with its one-step checkpoint (and, for alignment, its inputs)."""
    config = {"text": "text_pretrain", "vit": "vit_coca", "align": "align"}[name]
    args = ["--config", str(CONFIGS / config / "tiny.yaml"), "--ckpt_path", str(tiny[name])]
    if name == "align":
        args += ["--model.init_args.llm_checkpoint", str(tiny["text"]), "--model.init_args.vit_checkpoint",
                 str(tiny["vit"])]  # fmt: skip
    return args + ([] if name == "text" else ["--data.init_args.batch_size", "4"])


HEADLINES = {"text": ["test/loss", "test/ppl"], "vit": ["test/i2t_r@1", "test/caption"], "align": ["test/caption"]}


@pytest.mark.parametrize("name", list(HEADLINES))
def test_cli_test_reports_test_metrics(tiny, tmp_path, name):
    # 2 batches: jsonargparse reads `1` as the float 1.0 (Lightning's `float | int` hint), i.e. all of them
    stdout = run_cli(tmp_path, "test", *cli_args(tiny, name), "--trainer.limit_test_batches", "2")
    for metric in HEADLINES[name]:
        assert re.search(rf"{re.escape(metric)}\s+[\d.]+", stdout), stdout[-2000:]
    assert list((tmp_path / "runs").glob("*/version_0/test/events.out.tfevents.*"))


@pytest.mark.parametrize("name", list(HEADLINES))
def test_cli_predict_writes_readable_records(tiny, tmp_path, name):
    stdout = run_cli(tmp_path, "predict", *cli_args(tiny, name), "--trainer.limit_predict_batches", "2")
    path = Path(re.search(r"wrote (\d+) predictions to (\S+)", stdout).group(2))
    assert path.parent.name == "predict" and path.is_relative_to(tmp_path / "runs")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and {r["batch"] for r in records} == {0, 1}
    if name == "text":  # each document (or piece of one) of the packed rows: its loss and text
        assert all(r["tokens"] > 0 and r["loss"] > 0 and r["ppl"] > 1 and isinstance(r["text"], str) for r in records)
        assert sum(r["tokens"] for r in records) == 2 * 8 * 256  # 2 batches of 8 rows of 256 targets, all counted
    elif name == "vit":  # each image-caption pair: both embeddings and the nearest caption of the batch
        assert len(records) == 8 and all(len(r["image_embed"]) == len(r["text_embed"]) > 1 for r in records)
        assert all(-1 <= r["similarity"] <= 1 and r["nearest_caption"] and r["caption"] for r in records)
    else:  # each image: a greedy caption beside the reference
        assert len(records) == 8 and all(isinstance(r["caption"], str) and r["reference"] for r in records)
        assert all(r["reference_loss"] > 0 for r in records)


@pytest.mark.slow
def test_fsdp2_predict_captions_on_two_cpu_processes(tiny, tmp_path):
    """Under FSDP2 (2 gloo processes) every rank captions its share of the images in lock-step and writes its file."""
    fsdp = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": {
                "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False},
            },
        }
    }
    (tmp_path / "fsdp2.yaml").write_text(yaml.safe_dump(fsdp))
    args = [*cli_args(tiny, "align"), "--config", str(tmp_path / "fsdp2.yaml"), "--trainer.limit_predict_batches", "2"]
    stdout = run_cli(tmp_path, "predict", *args)
    paths = [Path(path) for _, path in re.findall(r"wrote (\d+) predictions to (\S+)", stdout)]
    assert sorted(path.name for path in paths) == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"], stdout[-2000:]
    ranks = [[json.loads(line) for line in path.read_text().splitlines()] for path in paths]
    assert [len(records) for records in ranks] == [8, 8]  # 2 batches of 4 images on each rank
    assert not {r["reference"] for r in ranks[0]} & {r["reference"] for r in ranks[1]}  # each rank its own share
    assert all(isinstance(r["caption"], str) and r["reference_loss"] > 0 for records in ranks for r in records)
