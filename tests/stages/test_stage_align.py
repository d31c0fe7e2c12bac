"""Stage 2b (alignment): the LLM stays frozen, the ViT and projector learn; generation runs from its checkpoint."""

import subprocess
import sys

import lightning.pytorch as pl
import torch
from helpers.colour_task import COCA, VIT, ColourData
from PIL import Image

from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import AlignStage, TextPretrainStage, ViTCoCaStage

LLM = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 32}


def fit(stage, data, tmp_path, steps: int):
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(stage, data)
    return trainer


def test_alignment_trains_vit_and_projector_through_a_frozen_llm(tmp_path):
    pl.seed_everything(0)
    schedule = LRSchedule(peak_lr=3e-3, warmup_steps=1, total_steps=5)
    text = fit(TextPretrainStage(llm="tiny", llm_overrides=LLM, schedule=schedule),
               SyntheticTextDataModule(vocab_size=32, seq_len=16, batch_size=4, num_rows=32), tmp_path, 3)  # fmt: skip
    text.save_checkpoint(tmp_path / "text.ckpt")
    vit = fit(ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA, schedule=schedule), ColourData(), tmp_path, 3)
    vit.save_checkpoint(tmp_path / "vit.ckpt")

    align = AlignStage(str(tmp_path / "text.ckpt"), str(tmp_path / "vit.ckpt"), schedule=schedule)
    assert align.projector.config.vision_dim == VIT["d_model"] and align.projector.config.llm_dim == LLM["d_model"]
    before = {name: p.detach().clone() for name, p in align.named_parameters()}
    trainer = fit(align, ColourData(), tmp_path, 5)
    after = dict(align.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("llm."))
    assert all(not p.requires_grad and p.grad is None for p in align.llm.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in align.llm.parameters())  # no optimizer state for the LLM
    for prefix in ("vit.", "projector."):
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)), prefix

    trainer.save_checkpoint(tmp_path / "align.ckpt")
    Image.new("RGB", (40, 28), (255, 0, 0)).save(tmp_path / "red.png")
    tokenizer = _tiny_tokenizer(tmp_path)
    cmd = [sys.executable, "-m", "mm_lightning.cli", "generate", "--ckpt", str(tmp_path / "align.ckpt"),
           "--image", str(tmp_path / "red.png"), "--tokenizer", str(tokenizer), "--max-new-tokens", "5"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    missing = subprocess.run([*cmd[:5], str(tmp_path / "nope.ckpt")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def _tiny_tokenizer(tmp_path):
    """A small byte-level tokenizer (the micro LLM's 32 ids decode to its special tokens and first bytes)."""
    from mm_lightning.tokenizer import train_bpe_tokenizer

    path = tmp_path / "tokenizer.json"
    train_bpe_tokenizer(["a red square", "a blue square"] * 8, vocab_size=300, out_path=path)
    return path
