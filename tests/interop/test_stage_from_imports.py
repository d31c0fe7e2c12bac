"""Imported weights as the starting point of the recipe: alignment starts from an imported Llama and SigLIP tower."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers.tiny_hf import llama_folder, siglip_folder  # noqa: E402

from mm_lightning.checkpoint import load_backbone  # noqa: E402
from mm_lightning.interop.llama import import_llama  # noqa: E402
from mm_lightning.interop.vision import import_vit  # noqa: E402
from mm_lightning.schedules import LRSchedule  # noqa: E402
from mm_lightning.stages import AlignStage  # noqa: E402

SHORT = LRSchedule(peak_lr=3e-3, min_lr=3e-4, warmup_steps=1, total_steps=6)


def test_alignment_starts_from_an_imported_llama_and_siglip(tmp_path):
    import_llama(llama_folder(tmp_path), tmp_path / "llama.ckpt")
    import_vit(tmp_path / "vit.ckpt", hf=str(siglip_folder(tmp_path)), rope_2d=True)
    stage = AlignStage(str(tmp_path / "llama.ckpt"), str(tmp_path / "vit.ckpt"), schedule=SHORT)
    assert torch.equal(stage.vit.pos_embed, load_backbone(tmp_path / "vit.ckpt", "vit").pos_embed)
    assert stage.vit.config.rope_2d and stage.projector.config.llm_dim == stage.llm.config.d_model == 64
    assert stage.inherited_image_preprocessing.patch_size == 8
