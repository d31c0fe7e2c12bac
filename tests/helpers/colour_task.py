"""A micro image-text task shared by the stage tests: images of one of 8 colours, captioned by the colour.

``VIT`` and ``COCA`` are micro backbone overrides sized for it (8-pixel patches, at most 32 per image).
"""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mm_lightning.ops.patches import image_to_patches, pack_patches

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
