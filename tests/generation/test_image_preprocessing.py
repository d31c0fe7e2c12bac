"""Images at inference are cut into patches as the checkpoint's training cut them: recorded, carried, used."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
from helpers.colour_task import COCA, VIT, ColourData
from PIL import Image

from mm_lightning.checkpoint import CheckpointError, checkpoint_meta, image_preprocessing, load_checkpoint
from mm_lightning.data import ImageTextDataModule, MixtureDataModule
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.generation import caption
from mm_lightning.generation import cli as generate_cli
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import AlignStage, TextPretrainStage, ViTCoCaStage
from mm_lightning.tokenizer import train_bpe_tokenizer

LLM = {"n_layers": 1, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 32}
TRAINED = ImagePreprocessing(patch_size=8, max_patches=12)  # below the ViT config's cap of 32 patches


class PatchedColourData(ColourData):
    """The colour task, stating its patching as ``ImageTextDataModule`` and ``MixtureDataModule`` do."""

    patch_size, max_patches = TRAINED.patch_size, TRAINED.max_patches


def fit_and_save(stage: pl.LightningModule, data: pl.LightningDataModule, path) -> dict:
    """One training step of ``stage`` on ``data``, its checkpoint saved to ``path``; returns its metadata."""
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=path.parent,
    )  # fmt: skip
    trainer.fit(stage, data)
    trainer.save_checkpoint(path)
    return checkpoint_meta(load_checkpoint(path), path)


@pytest.mark.parametrize(
    "datamodule",
    [
        lambda: ImageTextDataModule(patch_size=8, max_patches=12),
        lambda: MixtureDataModule(
            [{"name": "captions", "kind": "image_text", "path": "demo:emoji-scenes"}], patch_size=8, max_patches=12
        ),
    ],
    ids=["image_text", "mixture"],
)
def test_a_stage_reads_its_patching_from_the_recipe_datamodules(datamodule):
    stage = ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA)
    stage._trainer = SimpleNamespace(datamodule=datamodule())  # nothing is built: only the attributes are read
    assert stage.image_preprocessing() == TRAINED


def test_checkpoints_record_the_patching_and_generate_uses_it(tmp_path, monkeypatch):
    pl.seed_everything(0)
    schedule = LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=2)
    text_data = SyntheticTextDataModule(vocab_size=32, seq_len=16, batch_size=2, num_rows=8)
    text_meta = fit_and_save(TextPretrainStage(llm_overrides=LLM, schedule=schedule), text_data, tmp_path / "text.ckpt")
    vit_stage = ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA, schedule=schedule)
    vit_meta = fit_and_save(vit_stage, PatchedColourData(), tmp_path / "vit.ckpt")
    assert "image_preprocessing" not in text_meta  # no ViT, no images
    assert vit_meta["image_preprocessing"] == {"patch_size": 8, "max_patches": 12}

    # the alignment's own datamodule states no patching: the ViT checkpoint's is carried forward
    align = AlignStage(str(tmp_path / "text.ckpt"), str(tmp_path / "vit.ckpt"), schedule=schedule)
    align_meta = fit_and_save(align, ColourData(), tmp_path / "align.ckpt")
    assert align_meta["image_preprocessing"] == vit_meta["image_preprocessing"]
    assert align_meta["backbones"]["vit"]["max_patches"] == 32

    caps = []

    def recording_image_to_patches(pixels, patch_size, max_patches):
        caps.append((patch_size, max_patches))
        return image_to_patches(pixels, patch_size, max_patches)

    image_to_patches = caption.image_to_patches
    monkeypatch.setattr(caption, "image_to_patches", recording_image_to_patches)
    Image.new("RGB", (96, 64), (255, 0, 0)).save(tmp_path / "red.png")  # 12 x 8 patches uncapped
    train_bpe_tokenizer(["a red square", "a blue square"] * 8, 300, tmp_path / "tokenizer.json")
    text = generate_cli.run(["--ckpt", str(tmp_path / "align.ckpt"), "--image", str(tmp_path / "red.png"),
                             "--tokenizer", str(tmp_path / "tokenizer.json"), "--max-new-tokens", "4"])  # fmt: skip
    assert caps == [(8, 12)]
    assert "<|" not in text  # special tokens are left out of the printed text


def test_an_old_checkpoint_falls_back_to_its_vit_config_with_a_note(capsys):
    meta = {"backbones": {"vit": {**VIT, "patch_size": 14, "max_patches": 256}}}
    assert image_preprocessing(meta) == ImagePreprocessing(14, 256)
    assert "records no image preprocessing" in capsys.readouterr().err
    recorded = {**meta, "image_preprocessing": {"patch_size": 14, "max_patches": 100}}
    assert image_preprocessing(recorded) == ImagePreprocessing(14, 100)
    assert capsys.readouterr().err == ""
    with pytest.raises(CheckpointError, match="no ViT"):
        image_preprocessing({"backbones": {"llm": LLM}})
