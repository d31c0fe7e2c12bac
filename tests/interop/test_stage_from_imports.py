"""Imported weights as the starting point of the recipe: a Hugging Face Llama trains through stage 1 (and its
checkpoint exports back to ``transformers``), and alignment starts from an imported Llama and SigLIP tower."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers.tiny_hf import llama_folder, siglip_folder  # noqa: E402

from mm_lightning.checkpoint import load_backbone  # noqa: E402
from mm_lightning.data.synthetic import SyntheticTextDataModule  # noqa: E402
from mm_lightning.errors import ConfigError  # noqa: E402
from mm_lightning.interop.llama import export_llama, import_llama  # noqa: E402
from mm_lightning.interop.vision import import_vit  # noqa: E402
from mm_lightning.schedules import LRSchedule  # noqa: E402
from mm_lightning.stages import AlignStage, TextPretrainStage  # noqa: E402

SHORT = LRSchedule(peak_lr=3e-3, min_lr=3e-4, warmup_steps=1, total_steps=6)


def test_imported_llama_trains_through_stage_1(tmp_path, one_thread):
    import_llama(llama_folder(tmp_path, tie=True), tmp_path / "llama.ckpt")
    imported = load_backbone(tmp_path / "llama.ckpt", "llm")
    stage = TextPretrainStage(llm_checkpoint=str(tmp_path / "llama.ckpt"), schedule=SHORT)
    assert stage.llm.rope_base == 500_000.0 and torch.equal(stage.llm.embed.weight, imported.embed.weight)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    data = SyntheticTextDataModule(vocab_size=256, seq_len=32, batch_size=4, num_rows=24, mean_doc_len=8)
    trainer.fit(stage, data)
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    trained = load_backbone(tmp_path / "stage1.ckpt", "llm").eval()
    assert not torch.equal(trained.embed.weight, imported.embed.weight)

    export_llama(tmp_path / "stage1.ckpt", tmp_path / "hf")  # and back to transformers, at the same logits
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained(ids), atol=1e-4, rtol=0)


def test_stage_1_refuses_overrides_of_an_imported_architecture(tmp_path):
    import_llama(llama_folder(tmp_path), tmp_path / "llama.ckpt")
    with pytest.raises(ConfigError, match="llm_overrides"):
        TextPretrainStage(llm_checkpoint=str(tmp_path / "llama.ckpt"), llm_overrides={"n_layers": 4})


def test_alignment_starts_from_an_imported_llama_and_siglip(tmp_path):
    import_llama(llama_folder(tmp_path), tmp_path / "llama.ckpt")
    import_vit(tmp_path / "vit.ckpt", hf=str(siglip_folder(tmp_path)), rope_2d=True)
    stage = AlignStage(str(tmp_path / "llama.ckpt"), str(tmp_path / "vit.ckpt"), schedule=SHORT)
    assert torch.equal(stage.vit.pos_embed, load_backbone(tmp_path / "vit.ckpt", "vit").pos_embed)
    assert stage.vit.config.rope_2d and stage.projector.config.llm_dim == stage.llm.config.d_model == 64
    assert stage.inherited_image_preprocessing.patch_size == 8
