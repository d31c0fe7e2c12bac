"""Stage 2a (ViT + CoCa): the stage trains on packed native-resolution images and learns to retrieve."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mm_lightning.metrics import retrieval_recall
from mm_lightning.ops.patches import image_to_patches, pack_patches
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.vit_coca import ViTCoCaStage

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]
RGB = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]]).float()
VIT = {"patch_size": 8, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128, "max_patches": 32, "pos_grid": 8}
COCA = {"vocab_size": 32, "d_model": 64, "n_heads": 4, "n_unimodal_layers": 1, "n_multimodal_layers": 1,
        "mlp_hidden": 128, "max_text_len": 8, "embed_dim": 32, "n_image_queries": 4}  # fmt: skip


class ColourPairs(Dataset):
    """Images of varied sizes filled with one of 8 colours (plus noise); the caption names the colour."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 10_007 + index)
        colour = index % len(COLOURS)
        height, width = (int(v) for v in torch.randint(16, 48, (2,), generator=g))
        image = RGB[colour][:, None, None] * 2 - 1 + 0.3 * torch.randn(3, height, width, generator=g)
        return image, colour


def collate(samples: list[tuple[torch.Tensor, int]]) -> dict:
    patches, grids = zip(*(image_to_patches(image, 8, 32) for image, _ in samples), strict=True)
    batch = pack_patches(list(patches), list(grids))
    colours = torch.tensor([c for _, c in samples])
    eod = torch.zeros_like(colours)
    batch["caption_ids"] = torch.stack([eod, colours + 5, eod], dim=1)  # EOD as start token, colour, EOD
    batch["caption_mask"] = torch.ones_like(batch["caption_ids"], dtype=torch.bool)
    batch["captions"] = [COLOURS[c] for c in colours.tolist()]
    return batch


class ColourData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(ColourPairs(512, seed=0), batch_size=16, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ColourPairs(32, seed=1), batch_size=16, collate_fn=collate)


def test_retrieval_recall_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # images -> texts: 0 -> 1 ("a", its own caption's twin: hit), 1 -> 2 ("c" for "a": miss), 2 -> 0 ("a": miss)
    # texts -> images: 0 -> 0 (hit), 1 -> 0 (hit, the twin), 2 -> 1 ("a" for "c": miss)
    result = retrieval_recall(image, text, ["a", "a", "c"], ks=(1,))
    assert result == pytest.approx({"i2t_r@1": 1 / 3, "t2i_r@1": 2 / 3, "chance_r@1": 1 / 2})


def test_vit_coca_stage_learns_to_retrieve_colours(tmp_path):
    pl.seed_everything(0)
    stage = ViTCoCaStage(
        vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA,
        schedule=LRSchedule(peak_lr=3e-3, min_lr=3e-4, warmup_steps=5, total_steps=60),
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, val_check_interval=60, check_val_every_n_epoch=None, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(stage, ColourData())
    metrics = trainer.callback_metrics
    assert metrics["val/i2t_r@1"] >= 5 * metrics["val/chance_r@1"]  # chance is 1/8
    assert metrics["val/t2i_r@1"] >= 0.5
    assert metrics["val/caption"] < 1.0  # ln(32) = 3.5 at start
    assert torch.isfinite(metrics["train/loss"])


def test_vit_coca_stage_runs_on_the_emoji_demo(tmp_path, demo_emoji, demo_sotu):
    """Integration: the demo datamodule's batches go through the stage, and validation reports retrieval."""
    from mm_lightning.data import ImageTextDataModule

    data = ImageTextDataModule("demo:emoji-scenes", batch_size=8, max_patches=36, val_batches=2)
    stage = ViTCoCaStage(vit="tiny", coca="tiny", schedule=LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=3))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, limit_train_batches=3, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(stage, data)
    metrics = trainer.callback_metrics
    assert metrics["val/chance_r@1"] == pytest.approx(1 / 16)  # 2 batches of 8 distinct captions
    assert {"val/i2t_r@5", "val/t2i_r@1", "val/caption", "train/contrastive", "train/caption"} <= set(metrics)
    assert stage.tokens_seen > 0
