"""Stage 1 in two parts, as ``configs/text_pretrain/tiny_copy_warmup.yaml`` and ``tiny_copy.yaml`` run it: a copy
warm-up on ``CopyRowsDataModule`` with smeared keys, then text pre-training from its LLM with restated rows."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from mm_lightning.checkpoint import load_backbone, recorded_tokenizer
from mm_lightning.data import CopyRowsDataModule, TextDataModule
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 1, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "key_smear": True}


def _fit(stage: TextPretrainStage, data: pl.LightningDataModule, root: Path) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
        limit_val_batches=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, default_root_dir=root)  # fmt: skip
    trainer.fit(stage, datamodule=data)
    return trainer


def test_the_text_stage_starts_from_the_warm_up_and_keeps_its_smeared_keys(demo_sotu: Path, tmp_path: Path) -> None:
    schedule = LRSchedule(peak_lr=3e-3, min_lr=3e-3, warmup_steps=1, total_steps=3)
    warmup = TextPretrainStage(
        llm="tiny", llm_overrides=MICRO, optimizer=OptimizerConfig(name="muon"), schedule=schedule
    )
    copy_rows = CopyRowsDataModule(tokenizer_from="demo:sotu", seq_len=64, batch_size=2, span=8, gap=8, val_rows=2)
    trainer = _fit(warmup, copy_rows, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    warmup_ckpt = tmp_path / "warmup.ckpt"
    trainer.save_checkpoint(warmup_ckpt)
    assert recorded_tokenizer(str(warmup_ckpt)).to_str() == copy_rows.tokenizer.to_str()  # the text stage's vocabulary
    gates = load_backbone(str(warmup_ckpt), "llm").blocks[0].attn.smear_logit.detach().clone()

    text = TextPretrainStage(llm_checkpoint=str(warmup_ckpt), optimizer=OptimizerConfig(name="muon"), schedule=schedule)
    assert torch.equal(text.llm.blocks[0].attn.smear_logit.detach(), gates)  # the warm-up's gates, not a new start
    rows = TextDataModule("demo:sotu", seq_len=64, batch_size=2, repeat_share=0.5, repeat_span=(8, 32), val_batches=1)
    _fit(text, rows, tmp_path)
    assert text.llm.config.key_smear and not torch.equal(text.llm.blocks[0].attn.smear_logit.detach(), gates)
