"""``captions.png``: validation scenes beside their true caption and the captions after alignment and the last stage."""

from pathlib import Path

import torch
import yaml
from matplotlib.image import imread
from PIL import Image

from mm_lightning import build_backbone
from mm_lightning.checkpoint import META_KEY, to_plain
from mm_lightning.eval.caption_grid import DPI, FIGURE_WIDTH_IN, ROW_HEIGHT_IN, TITLE_HEIGHT_IN
from mm_lightning.pipeline.scene_grid import draw_caption_grid, validation_scenes, write_caption_grid
from mm_lightning.tokenizer import train_bpe_tokenizer

VIT = {"patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_patches": 32, "pos_grid": 8}
LLM = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 300}


def figure_size(scenes: int) -> tuple[int, int]:
    """The PNG's ``(width, height)`` in pixels for ``scenes`` scenes, two to a row."""
    rows = -(-scenes // 2)
    return round(FIGURE_WIDTH_IN * DPI), round((TITLE_HEIGHT_IN + ROW_HEIGHT_IN * rows) * DPI)


def png_size(path: Path) -> tuple[int, int]:
    height, width, _ = imread(path).shape
    return width, height


def test_the_grid_is_drawn_from_given_captions(tmp_path: Path):
    images = [Image.new("RGB", (64 + 32 * i, 96), (40 * i, 90, 200)) for i in range(3)]
    truths = ["a red apple at the top left on a blue background"] * 3
    columns = [("after stage 3 (align)", ["a woman frowning " * 8, "", "a bee"]), ("after 6", ["x", "y", "z"])]

    path = draw_caption_grid(images, truths, columns, tmp_path / "captions.png", title="tiny")

    assert path == tmp_path / "captions.png"
    assert png_size(path) == figure_size(3)


def save_stage_checkpoint(path: Path, modules: dict[str, torch.nn.Module], preprocessing: dict | None) -> None:
    """A stage checkpoint as a stage writes one: weights under ``<kind>.`` and the metadata block."""
    meta = {
        "backbones": {kind: to_plain(module.config) for kind, module in modules.items()},
        "prefixes": {kind: f"{kind}." for kind in modules},
    }
    if preprocessing:
        meta["image_preprocessing"] = preprocessing
    state = {f"{kind}.{key}": value for kind, module in modules.items() for key, value in module.state_dict().items()}
    torch.save({"state_dict": state, META_KEY: meta}, path)


def test_a_run_folder_gets_captions_after_alignment_and_after_the_last_vlm_stage(tmp_path: Path, capsys):
    torch.manual_seed(0)
    llm, vit = build_backbone("llm", "tiny", **LLM), build_backbone("vit", "tiny", **VIT)
    projector = build_backbone("projector", "tiny", vision_dim=VIT["d_model"], llm_dim=LLM["d_model"])
    train_bpe_tokenizer(["a red apple on a blue background"] * 8, 300, tmp_path / "tokenizer.json")
    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump({"data": {"init_args": {"tokenizer_path": str(tmp_path / "tokenizer.json")}}}))
    vlm = {"llm": llm, "vit": vit, "projector": projector}
    save_stage_checkpoint(tmp_path / "text.ckpt", {"llm": llm}, None)
    save_stage_checkpoint(tmp_path / "align.ckpt", vlm, {"patch_size": 8, "max_patches": 16})
    save_stage_checkpoint(tmp_path / "joint.ckpt", vlm, {"patch_size": 8, "max_patches": 24})
    stages = [
        {"name": "text", "index": 1, "status": "finished", "checkpoint": str(tmp_path / "text.ckpt")},
        {"name": "align", "index": 3, "status": "finished", "checkpoint": str(tmp_path / "align.ckpt"),
         "config": str(config)},
        {"name": "joint", "index": 4, "status": "finished", "checkpoint": str(tmp_path / "joint.ckpt")},
        {"name": "long", "index": 5, "status": "stopped", "checkpoint": str(tmp_path / "missing.ckpt")},
    ]  # fmt: skip

    path = write_caption_grid({"pipeline": "tiny", "stages": stages}, tmp_path / "run", count=3, max_new_tokens=3)

    assert path == tmp_path / "run" / "captions.png"
    assert png_size(path) == figure_size(3)
    assert capsys.readouterr().err == ""  # both checkpoints record their preprocessing: no fallback note
    assert write_caption_grid({"stages": stages[:1]}, tmp_path / "text_only") is None  # no VLM: nothing drawn
    assert not (tmp_path / "text_only").exists()


def test_validation_scenes_are_fixed():
    first, again = validation_scenes(2), validation_scenes(2)
    assert [caption for _, caption in first] == [caption for _, caption in again]
    assert all(image.tobytes() == other.tobytes() for (image, _), (other, _) in zip(first, again))
