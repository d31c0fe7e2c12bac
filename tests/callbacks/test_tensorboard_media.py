"""Images and text of the validation checks in TensorBoard: written by rank zero into a TensorBoard logger only, on
the given step; the probe's retrieval examples rank captions within the image's background, from the embeddings of
the probe's own forward passes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.precision import Precision
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mm_lightning.callbacks import EmojiIdentityProbe
from mm_lightning.callbacks.emoji_probe import example_rows, top_captions
from mm_lightning.callbacks.tensorboard_media import log_caption_grid, log_text_table
from mm_lightning.eval.caption_grid import DPI, FIGURE_WIDTH_IN, ROW_HEIGHT_IN, TITLE_HEIGHT_IN
from mm_lightning.eval.emoji_probe import embed_probe, probe_caption, probe_vocabulary
from mm_lightning.inference import evaluating
from mm_lightning.stages.vit_coca import ViTCoCaStage
from mm_lightning.tokenizer import train_bpe_tokenizer

VIT = {"patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_patches": 32, "pos_grid": 8}
COCA = {"vocab_size": 512, "d_model": 32, "n_heads": 2, "n_unimodal_layers": 1, "n_multimodal_layers": 1,
        "mlp_hidden": 64, "max_text_len": 24, "embed_dim": 16, "n_image_queries": 2}  # fmt: skip


def events(log_dir: str | Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def stand_in_trainer(loggers: list, rank_zero: bool = True, **fields) -> SimpleNamespace:
    return SimpleNamespace(loggers=loggers, is_global_zero=rank_zero, testing=False, **fields)


def test_the_grid_and_the_table_reach_tensorboard_on_the_given_step(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="stage")
    trainer = stand_in_trainer([CSVLogger(tmp_path), logger])  # the first TensorBoard logger, wherever it sits
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (96, 96), (30, 30, 200))]
    truths = ["a red background", "a blue | background"]
    assert log_caption_grid(trainer, "val/caption_grid", images, truths, [("generated now", ["red", ""])], 12, "t")
    assert log_text_table(trainer, "val/caption_samples", ("true", "generated"), list(zip(truths, ["red", ""])), 12)
    logger.experiment.flush()

    logged = events(logger.log_dir)
    (image,) = logged.Images("val/caption_grid")
    assert image.step == 12
    assert (image.width, image.height) == (FIGURE_WIDTH_IN * DPI, (TITLE_HEIGHT_IN + ROW_HEIGHT_IN) * DPI)
    (text,) = logged.Tensors("val/caption_samples/text_summary")  # add_text's own suffix
    assert text.step == 12
    table = text.tensor_proto.string_val[0].decode()
    assert table.splitlines() == [
        "| true | generated |",
        "| --- | --- |",
        "| a red background | red |",
        "| a blue \\| background | (nothing) |",  # a pipe would end the cell; an empty caption shows as such
    ]


@pytest.mark.parametrize("setting", ["no TensorBoard logger", "not rank zero", "no images"])
def test_nothing_is_drawn_without_a_tensorboard_logger_on_rank_zero(tmp_path, setting):
    logger = TensorBoardLogger(tmp_path)
    trainer = {
        "no TensorBoard logger": stand_in_trainer([CSVLogger(tmp_path)]),
        "not rank zero": stand_in_trainer([logger], rank_zero=False),
        "no images": stand_in_trainer([logger]),
    }[setting]
    images = [] if setting == "no images" else [Image.new("RGB", (8, 8))]
    assert not log_caption_grid(trainer, "val/caption_grid", images, ["x"] * len(images), [], 0)
    assert not (Path(logger.log_dir).exists() and events(logger.log_dir).Tags()["images"])


def test_example_rows_spread_from_the_first_to_the_last():
    assert example_rows(640, 4) == [0, 213, 426, 639]
    assert example_rows(3, 5) == [0, 1, 2]
    assert example_rows(10, 1) == [0]
    assert example_rows(10, 0) == []


def test_top_captions_rank_within_the_image_background_only():
    probe = SimpleNamespace(background=torch.tensor([0, 0, 0, 1, 1, 1]))
    text = torch.eye(6)
    image = torch.zeros(6, 6)
    image[0, [0, 1, 3]] = torch.tensor([0.2, 1.0, 5.0])  # closest to caption 3, on the other background
    image[4, [3, 4, 5]] = torch.tensor([0.5, 0.1, 2.0])
    retrieved = top_captions(probe, image, text, [0, 4], top_k=2)
    assert [[row for row, _ in hits] for hits in retrieved] == [[1, 0], [5, 3]]
    assert retrieved[0][0][1] == pytest.approx(1.0 / (1.0 + 0.04 + 25.0) ** 0.5)  # cosine
    assert len(top_captions(probe, image, text, [0], top_k=9)[0]) == 3  # at most the background's captions


def test_the_probe_shows_what_its_own_forward_passes_retrieve(tmp_path):
    torch.manual_seed(0)
    stage = ViTCoCaStage(vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA)
    stage.report_validation = lambda metrics, headline: None
    tokenizer = train_bpe_tokenizer([probe_caption(sprite, "red") for sprite in probe_vocabulary()], vocab_size=512)
    data = SimpleNamespace(tokenizer=tokenizer, patch_size=8, max_patches=32, max_caption_len=24)
    logger = TensorBoardLogger(tmp_path)
    trainer = stand_in_trainer([logger], datamodule=data, precision_plugin=Precision())
    callback = EmojiIdentityProbe(backgrounds=["red"], batch_size=16, examples=3, top_k=2)
    callback.on_validation_epoch_end(trainer, stage)
    logger.experiment.flush()

    logged = events(logger.log_dir)
    assert [image.step for image in logged.Images("val/probe_retrieval")] == [0]
    table = logged.Tensors("val/probe_retrieval_samples/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = [line.removeprefix("| ").removesuffix(" |").split(" | ") for line in table.splitlines()[2:]]
    with evaluating(stage):
        image_embed, text_embed = embed_probe(stage.vit, stage.coca, callback._probe, batch_size=64)  # one pass
    expected = top_captions(callback._probe, image_embed, text_embed, [0, 32, 63], top_k=2)
    assert len(rows) == 3 and all(len(row) == 3 for row in rows)  # its caption, then the two retrieved
    for row, hits in zip(rows, expected):
        assert [cell.split(" (cosine")[0] for cell in row[1:]] == [callback._probe.captions[hit] for hit, _ in hits]
