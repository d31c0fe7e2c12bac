"""Emoji scenes (deterministic, held-out compositions) and ImageTextDataModule batches (packed patches, captions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data import ImageTextDataModule
from mm_lightning.data.image_text import collate_image_text
from mm_lightning.demo.emoji_scenes import (
    PALETTE,
    SceneConfig,
    emoji_name,
    encode_png,
    generate_scene,
    render_scene,
    vocabulary,
)
from mm_lightning.errors import DataError
from mm_lightning.prep.image_text import prepare_image_text_shards

CONFIG = SceneConfig(vocab_size=16)


def test_scenes_are_deterministic() -> None:
    for split, index in (("train", 0), ("train", 7), ("val", 3)):
        first, again = generate_scene(CONFIG, split, index), generate_scene(CONFIG, split, index)
        assert first == again and encode_png(render_scene(first)) == encode_png(render_scene(again))
    assert generate_scene(CONFIG, "train", 0) != generate_scene(SceneConfig(vocab_size=16, seed=1), "train", 0)
    assert vocabulary(16) == vocabulary(16) and len(set(vocabulary(16))) == 16


def covers_a_merged_block(start: int, size: int, cell: int) -> bool:
    """Whether ``[start, start + size)`` holds a whole pair of cells from an even cell, one side of the 2 x 2 block of
    patches the projector merges into one LLM token (the image's top-left is block-aligned)."""
    first_even = -(-start // (2 * cell)) * 2 * cell
    return first_even + 2 * cell <= start + size


def test_scene_captions_and_geometry() -> None:
    for index in range(300):
        scene = generate_scene(CONFIG, "train", index)
        image = render_scene(scene)
        assert image.size == (scene.width, scene.height) and 64 <= min(image.size) <= max(image.size) <= 192
        assert scene.caption.endswith(f"{scene.background} background") and scene.background in PALETTE
        assert all(emoji_name(s) in scene.caption for s in scene.sprites) and len(set(scene.sprites)) <= 3
        for x, y, size in scene.boxes:
            assert 0 <= x and x + size <= scene.width and 0 <= y and y + size <= scene.height
            assert covers_a_merged_block(x, size, CONFIG.cell) and covers_a_merged_block(y, size, CONFIG.cell), scene
        centers = [(x + s / 2, y + s / 2) for x, y, s in scene.boxes]
        axis = {"vertical": 1, "column": 1, "horizontal": 0, "row": 0}.get(scene.composition.split(":")[0])
        if axis is not None:  # stored top-to-bottom / left-to-right, separated more along the axis than across
            for a, b in zip(centers, centers[1:]):
                assert b[axis] - a[axis] > abs(b[1 - axis] - a[1 - axis])


def test_val_compositions_never_appear_in_train() -> None:
    train = [generate_scene(CONFIG, "train", i) for i in range(3000)]
    val = [generate_scene(CONFIG, "val", i) for i in range(300)]
    train_compositions = {s.composition for s in train}
    assert train_compositions.isdisjoint(s.composition for s in val)
    assert {s for scene in val for s in scene.sprites} <= {s for scene in train for s in scene.sprites}
    assert len({s.composition.split(":")[0] for s in val}) >= 10  # places, relations, rows and columns


def test_collate_pads_truncates_and_packs() -> None:
    items = [
        {"patches": torch.randn(6, 12), "grid": (2, 3), "caption_ids": [5, 6, 0], "caption": "a"},
        {"patches": torch.randn(4, 12), "grid": (4, 1), "caption_ids": [7, 8, 9, 0], "caption": "b"},
    ]
    batch = collate_image_text(items, max_caption_len=5, pad_id=1)
    assert batch["patches"].shape == (1, 10, 12) and batch["grid_hw"].tolist() == [[2, 3], [4, 1]]
    assert batch["seq_ids"].tolist() == [[0] * 6 + [1] * 4]
    assert batch["caption_ids"].tolist() == [[5, 6, 0, 1, 1], [7, 8, 9, 0, 1]]
    assert batch["caption_mask"].sum(1).tolist() == [3, 4] and batch["captions"] == ["a", "b"]


def check_batch(batch: dict, dm: ImageTextDataModule, batch_size: int) -> None:
    """The batch layout every ViT stage relies on."""
    patch_dim = 3 * dm.patch_size**2
    n = batch["grid_hw"].prod(1)
    assert batch["patches"].shape == (1, int(n.sum()), patch_dim) and batch["patches"].dtype == torch.float32
    assert batch["grid_hw"].shape == (batch_size, 2) and (n <= dm.max_patches).all()
    assert torch.equal(batch["seq_ids"][0], torch.repeat_interleave(torch.arange(batch_size), n))
    assert batch["patches"].abs().max() <= 1.0 + 1e-4  # antialiased resizing may overshoot by rounding
    assert batch["caption_ids"].shape == (batch_size, dm.max_caption_len) and batch["caption_ids"].dtype == torch.int64
    eod = tokenizer_lib.eod_id(dm.tokenizer)
    for ids, mask, caption in zip(batch["caption_ids"], batch["caption_mask"], batch["captions"]):
        tokens = ids[mask].tolist()
        assert tokens[0] == tokens[-1] == eod and (ids[~mask] == dm.pad_id).all()  # EOD opens and closes
        assert caption.startswith(tokenizer_lib.decode(dm.tokenizer, tokens[1:-1]))


def test_demo_datamodule_batches(demo_emoji: Path, demo_sotu: Path) -> None:
    summary = json.loads((demo_emoji / "prep_summary.json").read_text())
    assert summary["splits"]["train"]["pairs"] >= 1024 and len(summary["vocabulary"]) == 64
    dm = ImageTextDataModule("demo:emoji-scenes", batch_size=8, max_patches=64, val_batches=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokenizer.to_str() == tokenizer_lib.load_tokenizer(demo_sotu / "tokenizer.json").to_str()
    check_batch(next(iter(dm.train_dataloader())), dm, 8)
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["captions"][0] == generate_scene(SceneConfig(), "val", 0).caption
    check_batch(val[0], dm, 8)


def test_prepared_folder_datamodule(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    rows = []
    for i in range(12):
        render_scene(generate_scene(CONFIG, "train", i)).save(tmp_path / "raw" / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": generate_scene(CONFIG, "train", i).caption}))
    (tmp_path / "raw" / "captions.jsonl").write_text("\n".join(rows) + "\n")
    tok = tokenizer_lib.train_bpe_tokenizer([r for r in rows], vocab_size=300, out_path=tmp_path / "tok.json")
    prepare_image_text_shards([tmp_path / "raw"], tmp_path / "out", val_fraction=0.25, num_workers=1, progress=False)
    with pytest.raises(DataError, match="no tokenizer.json"):
        ImageTextDataModule(str(tmp_path / "out")).setup("fit")
    dm = ImageTextDataModule(str(tmp_path / "out"), batch_size=4, tokenizer_path=str(tmp_path / "tok.json"))
    dm.setup("fit")
    assert dm.vocab_size == tok.get_vocab_size()
    check_batch(next(iter(dm.train_dataloader())), dm, 4)
    with pytest.raises(DataError, match="not a prepared image-text dataset"):
        ImageTextDataModule(str(tmp_path / "raw"), tokenizer_path=str(tmp_path / "tok.json")).setup("fit")
