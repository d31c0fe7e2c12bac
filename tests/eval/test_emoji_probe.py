"""Emoji-identity probe: the probe set, recall within a background, its chance and colour-only baseline, callback."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.colour_task import VIT
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import Precision

from mm_lightning.callbacks import EmojiIdentityProbe
from mm_lightning.data.image_text import ImageTextTransform, collate_image_text
from mm_lightning.demo.emoji_scenes import PALETTE, SceneConfig, encode_png, generate_scene
from mm_lightning.errors import ConfigError
from mm_lightning.eval.emoji_probe import (
    PROBE_CANVAS,
    build_probe_set,
    colour_features,
    identity_recall,
    probe_backgrounds,
    probe_caption,
    probe_vocabulary,
    render_probe,
)
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.vit_coca import ViTCoCaStage
from mm_lightning.tokenizer import PAD_ID, train_bpe_tokenizer

CAPTION_LEN = 24
COCA = {"vocab_size": 512, "d_model": 64, "n_heads": 4, "n_unimodal_layers": 1, "n_multimodal_layers": 1,
        "mlp_hidden": 128, "max_text_len": CAPTION_LEN, "embed_dim": 32, "n_image_queries": 4}  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    captions = [probe_caption(s, b) for s in probe_vocabulary() for b in PALETTE]
    return train_bpe_tokenizer(captions, vocab_size=512)


@pytest.fixture(scope="module")
def probe(tok):
    return build_probe_set(tok, patch_size=8, max_patches=32, max_caption_len=CAPTION_LEN, backgrounds=2)


def test_probe_set_holds_every_emoji_on_each_background(probe):
    n = len(probe_vocabulary())
    assert n == 64 and len(probe) == 2 * n and probe.backgrounds == ["black", "blue"]
    assert probe.emoji.tolist() == list(range(n)) * 2
    assert probe.background.tolist() == [0] * n + [1] * n
    assert probe.captions[0] == probe_caption(probe_vocabulary()[0], "black")
    assert probe.captions[n].endswith(" in the center on a blue background")
    assert len(set(probe.captions)) == len(probe)
    assert probe.caption_ids.shape == probe.caption_mask.shape == (len(probe), CAPTION_LEN)
    assert set(probe.grids) == {(5, 6)}  # 128 px at 8 px patches, at most 32 of them (fit_to_patch_grid)
    assert all(p.shape == (30, 3 * 8 * 8) for p in probe.patches)


def test_probe_caption_is_the_scenes_wording_of_one_centred_emoji():
    config = SceneConfig()
    scene = next(
        s for i in range(5000) if (s := generate_scene(config, "train", i)).composition.startswith("place-11:")
    )
    assert probe_caption(scene.sprites[0], scene.background) == scene.caption


def test_probe_is_preprocessed_and_tokenized_as_the_datamodule_does(tok, probe):
    transform = ImageTextTransform(tok, patch_size=8, max_patches=32, max_caption_len=CAPTION_LEN)
    sprite = probe_vocabulary()[5]
    record = {"image": encode_png(render_probe(sprite, "blue")), "caption": probe_caption(sprite, "blue")}
    batch = collate_image_text([transform(record)], max_caption_len=CAPTION_LEN, pad_id=PAD_ID)
    row = 64 + 5
    torch.testing.assert_close(batch["patches"][0], probe.patches[row], rtol=0, atol=0)
    assert torch.equal(batch["caption_ids"][0], probe.caption_ids[row])
    assert torch.equal(batch["caption_mask"][0], probe.caption_mask[row])


def test_probe_image_is_the_emoji_centred_on_the_background():
    sprite = probe_vocabulary()[0]
    image = render_probe(sprite, "green")
    assert image.size == (PROBE_CANVAS, PROBE_CANVAS)
    assert image.getpixel((0, 0)) == image.getpixel((PROBE_CANVAS - 1, PROBE_CANVAS - 1)) == PALETTE["green"]
    centre = image.crop((PROBE_CANVAS // 2 - 8, PROBE_CANVAS // 2 - 8, PROBE_CANVAS // 2 + 8, PROBE_CANVAS // 2 + 8))
    assert len(centre.getcolors()) > 1  # the emoji covers the centre


def test_probe_backgrounds_by_name_or_count():
    assert probe_backgrounds() == sorted(PALETTE)
    assert probe_backgrounds(3) == sorted(PALETTE)[:3]
    assert probe_backgrounds(["red", "blue", "red"]) == ["red", "blue"]
    with pytest.raises(ConfigError, match="teal"):
        probe_backgrounds(["teal"])
    with pytest.raises(ConfigError):
        probe_backgrounds(0)


def test_identity_recall_by_hand_ranks_within_a_background_only():
    # two backgrounds of two emoji; the off-background scores (9) would win any retrieval that crossed backgrounds
    similarity = torch.tensor(
        [[1.0, 0.0, 9.0, 9.0], [0.5, 0.2, 9.0, 9.0], [9.0, 9.0, 0.3, 0.3], [9.0, 9.0, 0.1, 0.7]]
    )  # [4 images, 4 texts]
    emoji, background = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    result = identity_recall(similarity, emoji, background, ks=(1,))
    # i2t: background 0 -> image 0 hits, image 1 misses (0.5 > 0.2); background 1 -> image 2 ties (1/2), image 3 hits
    # t2i: background 0 -> text 0 (1.0 vs 0.5) and text 1 (0.2 vs 0.0) hit; background 1 -> text 0 (0.3 vs 0.1) and
    # text 1 (0.7 vs 0.3) hit
    assert result == pytest.approx({"i2t_r@1": (1 / 2 + 3 / 4) / 2, "t2i_r@1": 1.0, "chance_r@1": 1 / 2})


def test_chance_comes_from_the_counts():
    n = 64
    emoji, background = torch.arange(n).repeat(3), torch.arange(3).repeat_interleave(n)
    result = identity_recall(torch.randn(3 * n, 3 * n), emoji, background)
    assert result["chance_r@1"] == pytest.approx(1 / 64) and result["chance_r@5"] == pytest.approx(5 / 64)
    small = identity_recall(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.long), ks=(5,))
    assert small["chance_r@5"] == 1.0 and small["i2t_r@5"] == 1.0


def test_repeated_emoji_on_one_background_is_refused():
    with pytest.raises(ValueError, match="repeats an emoji"):
        identity_recall(torch.randn(2, 2), torch.tensor([3, 3]), torch.tensor([0, 0]))


def test_oracle_scores_one_and_shape_blind_features_score_chance(probe):
    oracle = F.one_hot(probe.emoji, 64).float()  # [B, 64] identity, blind to colour
    perfect = identity_recall(oracle @ oracle.T, probe.emoji, probe.background)
    assert all(perfect[f"{d}_r@{k}"] == 1.0 for d in ("i2t", "t2i") for k in (1, 5))

    colour = F.one_hot(probe.background, 2).float()  # [B, 2] the background alone
    blind = identity_recall(colour @ colour.T, probe.emoji, probe.background)
    for key in ("i2t_r@1", "t2i_r@1", "i2t_r@5", "t2i_r@5"):
        assert blind[key] == pytest.approx(blind[f"chance_r@{key[-1]}"])

    image, text = colour_features(probe)  # the colour-only baseline: mean pixel vs the named background
    assert image.shape == text.shape == (len(probe), 3)
    baseline = identity_recall(-torch.cdist(image, text), probe.emoji, probe.background)
    assert baseline == pytest.approx({**{f"{d}_r@1": 1 / 64 for d in ("i2t", "t2i", "chance")},
                                      **{f"{d}_r@5": 5 / 64 for d in ("i2t", "t2i", "chance")}})  # fmt: skip


def test_callback_scores_in_eval_mode_and_restores_train_mode(tok):
    stage = ViTCoCaStage(vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA)
    stage.train()
    reported = []
    stage.report_validation = lambda metrics, headline: reported.append((metrics, headline))
    data = SimpleNamespace(tokenizer=tok, patch_size=8, max_patches=32, max_caption_len=CAPTION_LEN)
    trainer = SimpleNamespace(datamodule=data, precision_plugin=Precision())
    probe_callback = EmojiIdentityProbe(backgrounds=["red"], batch_size=16)
    probe_callback.on_validation_epoch_end(trainer, stage)
    probe_callback.on_validation_epoch_end(trainer, stage)
    assert stage.vit.training and stage.coca.training
    (first, headline), (second, _) = reported
    assert headline == "val/probe_i2t_r@1" and first == second  # eval mode: no dropout, the same figures
    assert first["val/probe_chance_r@1"] == pytest.approx(1 / 64)
    assert first["val/probe_colour_only_r@1"] == pytest.approx(1 / 64)


def test_callback_logs_the_probe_before_and_after_a_step_of_the_vit_stage(tmp_path, demo_emoji, demo_sotu):
    from mm_lightning.data import ImageTextDataModule

    data = ImageTextDataModule("demo:emoji-scenes", batch_size=8, max_patches=36, val_batches=1)
    stage = ViTCoCaStage(vit="tiny", coca="tiny", schedule=LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=3))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1,
        callbacks=[EmojiIdentityProbe(backgrounds=1, batch_size=16)], logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(stage, data)
    names = ("i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "chance_r@1", "chance_r@5", "colour_only_r@1")
    metrics = trainer.callback_metrics
    assert {f"val/probe_{name}" for name in names} <= set(metrics)
    assert metrics["val/probe_chance_r@5"] == pytest.approx(5 / 64)
    assert 0.0 <= metrics["val/probe_i2t_r@1"] <= 1.0
    trainer.logger.save()
    with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
        logged = [row["val/probe_i2t_r@1"] for row in csv.DictReader(file) if row.get("val/probe_i2t_r@1")]
    assert len(logged) == 2  # the sanity validation (the "before" figure) and the one after the step
