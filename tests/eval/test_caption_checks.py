"""Caption checks: the fixed scene set, the image-use gap, greedy-caption accuracy and chance, and the callback."""

import dataclasses
import math

import lightning.pytorch as pl
import pytest
import torch
from helpers.colour_task import COCA, VIT, ColourData

from mm_lightning.callbacks import CaptionChecks
from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.demo.emoji_scenes import (
    PALETTE,
    Scene,
    SceneConfig,
    emoji_name,
    generate_scene,
    load_emoji_meta,
    render_scene,
    vocabulary,
    write_scene_shards,
)
from mm_lightning.eval.caption_checks import (
    SceneSet,
    build_scene_set,
    caption_accuracy,
    caption_chance,
    caption_checks,
    image_text_batches,
    image_use_gap,
    mismatch_order,
    named_background,
    named_emoji,
    scene_config,
)
from mm_lightning.generation.caption import caption_images
from mm_lightning.inference import torch_threads
from mm_lightning.losses import NextTokenLoss
from mm_lightning.media.images import ImagePreprocessing, encode_image
from mm_lightning.models.registry import build_backbone
from mm_lightning.models.vlm import VLM
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import AlignStage, TextPretrainStage, ViTCoCaStage
from mm_lightning.tokenizer import IMAGE_ID, train_bpe_tokenizer

LLM = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 320}
PREPROCESSING = ImagePreprocessing(VIT["patch_size"], VIT["max_patches"])
METRICS = ("image_use_gap", "caption_loss_right", "caption_loss_mismatched", "caption_colour_acc",
           "caption_emoji_any_acc", "caption_emoji_all_acc", "caption_colour_chance",
           "caption_emoji_any_chance")  # fmt: skip


def scene(background: str, *names: str) -> Scene:
    """A scene with the named emoji on ``background`` (no image: for the parsing and chance tests)."""
    sprites = {entry["name"].lower(): index for index, entry in enumerate(load_emoji_meta()["emoji"])}
    return Scene(64, 64, background, tuple(sprites[name] for name in names), (), "", "")


def hand_made_set() -> SceneSet:
    scenes = (scene("blue", "cat"), scene("blue", "cat", "dog"), scene("red", "red apple"), scene("green", "cat face"))
    return SceneSet(scenes, (), ("cat", "cat face", "dog", "red apple"))


def test_the_scene_set_is_fixed_and_rendered_as_the_shards_are():
    config = SceneConfig()
    first, again = build_scene_set(config, 6), build_scene_set(config, 6)
    assert first.scenes == again.scenes == tuple(generate_scene(config, "val", i) for i in range(6))
    for a, b, s in zip(first.images, again.images, first.scenes, strict=True):
        assert a.tobytes() == b.tobytes() == render_scene(s).tobytes()
    assert first.emoji_names == tuple(emoji_name(sprite) for sprite in vocabulary(config.vocab_size, config.seed))
    assert first.truth(0) == (first.scenes[0].background, {emoji_name(s) for s in first.scenes[0].sprites})


def test_the_mismatch_changes_background_and_emoji_wherever_it_can():
    scenes = build_scene_set(SceneConfig(), 64).scenes
    order = mismatch_order(scenes)
    assert sorted(order) == list(range(64)) and all(i != j for i, j in enumerate(order))
    for i, j in enumerate(order):
        assert scenes[i].background != scenes[j].background and not set(scenes[i].sprites) & set(scenes[j].sprites)
    alike = [scene("red", "cat"), scene("red", "dog"), scene("blue", "cat face"), scene("blue", "red apple")]
    order = mismatch_order(alike)  # the roll by one pairs red with red and blue with blue: swapped until it does not
    assert all(alike[i].background != alike[j].background for i, j in enumerate(order))


def test_captions_are_parsed_with_the_demo_vocabulary():
    names = ("cat", "cat face", "dog", "red apple")
    assert named_emoji("a cat face above a dog", names) == {"cat face", "dog"}  # not "cat": the longest name wins
    assert named_emoji("a bobcat and a hotdog", names) == set()  # whole phrases only
    assert named_background("a red apple on the left on a blue background") == "blue"  # not the emoji's "red"
    assert named_background("a red apple on the left") is None
    captions = [
        "a dog at the top on a blue background",  # right colour, wrong emoji
        "a cat above a dog on a blue background",  # both, all emoji
        "a red apple on the left on a green background",  # an emoji, the colour wrong ("red" is the apple's)
        "a cat in the center on a purple background",  # neither: a cat is not a cat face
    ]
    accuracy = caption_accuracy(captions, hand_made_set())
    assert accuracy == {"caption_colour_acc": 0.5, "caption_emoji_any_acc": 0.5, "caption_emoji_all_acc": 0.5}
    assert caption_accuracy(["a cat on a blue background", ""], hand_made_set())["caption_emoji_all_acc"] == 0.5


def test_chance_is_what_a_constant_guess_of_the_most_common_scores():
    chance = caption_chance(hand_made_set())
    assert chance == {"caption_colour_chance": 0.5, "caption_emoji_any_chance": 0.5}  # blue 2 of 4; cat in 2 of 4
    guess = caption_accuracy(["a cat on a blue background"] * 4, hand_made_set())
    assert (guess["caption_colour_acc"], guess["caption_emoji_any_acc"]) == tuple(chance.values())
    assert caption_chance(hand_made_set(), count=2) == {"caption_colour_chance": 1.0, "caption_emoji_any_chance": 1.0}
    sample = caption_chance(build_scene_set(SceneConfig(), 100))
    assert 0.1 <= sample["caption_colour_chance"] < 0.3 and 0.0 < sample["caption_emoji_any_chance"] < 0.2


def micro_vlm() -> VLM:
    projector = build_backbone("projector", "tiny", vision_dim=VIT["d_model"], llm_dim=LLM["d_model"])
    return VLM(build_backbone("llm", "tiny", **LLM), build_backbone("vit", "tiny", **VIT), projector, IMAGE_ID)


def colour_captioned(scenes) -> list[Scene]:
    """The scenes captioned by their background alone ("a red background"): only the image can tell the caption."""
    return [dataclasses.replace(s, caption=f"a {s.background} background") for s in scenes]


@pytest.fixture(scope="module")
def colour_task() -> dict:
    """A micro VLM trained 60 steps to name the background of emoji scenes, its tokenizer and 32 val scenes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([f"a {colour} background" for colour in PALETTE] * 4, vocab_size=300)
    val = build_scene_set(SceneConfig(), 32)
    val = dataclasses.replace(val, scenes=tuple(colour_captioned(val.scenes)))
    vlm = micro_vlm()
    train = colour_captioned(generate_scene(SceneConfig(), "train", i) for i in range(128))
    images = [encode_image(render_scene(s)) for s in train]
    batches = image_text_batches(images, [s.caption for s in train], tokenizer, PREPROCESSING, batch_size=16)
    optimizer = torch.optim.AdamW(vlm.parameters(), lr=5e-3)
    for step in range(60):
        batch = batches[step % len(batches)]
        rows = caption_rows(batch, vlm.projector.num_tokens, IMAGE_ID)
        logits = vlm(rows["input_ids"], batch["patches"], batch["grid_hw"], batch["seq_ids"],
                     position_ids=rows["position_ids"], seq_ids=rows["seq_ids"])  # fmt: skip
        optimizer.zero_grad()
        NextTokenLoss()(logits, rows["labels"])["loss"].backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return {"vlm": vlm, "tokenizer": tokenizer, "val": val}


def test_the_gap_is_zero_for_a_blind_model_and_large_for_one_that_reads_its_images(colour_task, one_thread):
    tokenizer, val = colour_task["tokenizer"], colour_task["val"]
    blind = micro_vlm()
    for parameter in blind.projector.parameters():  # every image token is the same zero vector
        torch.nn.init.zeros_(parameter)
    assert abs(image_use_gap(blind, tokenizer, val, PREPROCESSING, pairs=32)["image_use_gap"]) < 0.01

    gap = image_use_gap(colour_task["vlm"], tokenizer, val, PREPROCESSING, pairs=32)
    assert colour_task["vlm"].training  # the checks restore the mode they found
    assert gap["image_use_gap"] == pytest.approx(gap["caption_loss_mismatched"] - gap["caption_loss_right"])
    assert gap["caption_loss_right"] < 0.5 and gap["image_use_gap"] > 1.0, gap  # 0.12-0.23 and 1.25-1.88 over seeds


def test_greedy_captions_of_a_model_that_reads_its_images_name_the_background(colour_task, one_thread):
    vlm, tokenizer, val = colour_task["vlm"], colour_task["tokenizer"], colour_task["val"]
    vlm.llm.eval()  # as the alignment stage's frozen LLM: each backbone keeps the mode it had
    metrics, captions = caption_checks(vlm, tokenizer, val, PREPROCESSING, scenes=32, max_new_tokens=6)
    assert not vlm.llm.training and vlm.vit.training and vlm.projector.training
    vlm.llm.train()
    assert metrics["caption_colour_acc"] > 0.6 > 0.3 > metrics["caption_colour_chance"], metrics  # 0.78-1.0 vs 0.22
    assert metrics["caption_emoji_any_acc"] == 0.0 and len(captions) == 32
    alone = caption_images(vlm, tokenizer, val.images, PREPROCESSING, max_new_tokens=6, batch_size=1)
    assert captions == alone  # batching prompts of one length changes no caption
    assert caption_images(vlm, tokenizer, val.images[:4], PREPROCESSING, 6, stop_at_eod=False) == captions[:4]


class CaptionedColourData(ColourData):
    """The micro colour task, with what the callback reads from a datamodule: tokenizer and image preprocessing."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer, self.patch_size, self.max_patches = tokenizer, VIT["patch_size"], VIT["max_patches"]


def fit(stage, data, root, steps: int, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, default_root_dir=root)  # fmt: skip
    trainer = pl.Trainer(**{**options, **kwargs})
    trainer.fit(stage, data)
    return trainer


def test_the_callback_logs_every_check_before_and_during_an_alignment_fit(tmp_path, capsys, one_thread):
    pl.seed_everything(0)
    short = LRSchedule(peak_lr=3e-3, warmup_steps=1, total_steps=5)
    text = SyntheticTextDataModule(vocab_size=LLM["vocab_size"], seq_len=16, batch_size=4, num_rows=16)
    fit(TextPretrainStage(llm="tiny", llm_overrides=LLM, schedule=short), text, tmp_path, 1).save_checkpoint(
        tmp_path / "text.ckpt"
    )
    vit = fit(ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA, schedule=short), ColourData(), tmp_path, 1)
    vit.save_checkpoint(tmp_path / "vit.ckpt")
    write_scene_shards(SceneConfig(), tmp_path / "scenes", {"train": 2, "val": 4}, num_workers=1)
    assert scene_config(str(tmp_path / "scenes")) == SceneConfig()

    tokenizer = train_bpe_tokenizer([s.caption for s in build_scene_set(SceneConfig(), 8).scenes], vocab_size=300)
    checks = CaptionChecks(scenes=4, gap_pairs=4, max_new_tokens=4, data_path=str(tmp_path / "scenes"), samples=3)
    align = AlignStage(str(tmp_path / "text.ckpt"), str(tmp_path / "vit.ckpt"), schedule=short)
    trainer = fit(align, CaptionedColourData(tokenizer), tmp_path, 1, callbacks=[checks], num_sanity_val_steps=1,
                  limit_val_batches=1, val_check_interval=1)  # fmt: skip
    for name in METRICS:
        assert math.isfinite(float(trainer.callback_metrics[f"val/{name}"])), name
    lines = [line for line in capsys.readouterr().out.splitlines() if "val/image_use_gap" in line]
    assert [line.split(":")[0] for line in lines] == ["before training 0", "step 1"]  # the sanity check, then step 1
    truths = [s.caption for s in build_scene_set(SceneConfig(), 3).scenes]
    assert [truth for truth, _ in checks.last_samples] == truths
    assert all(isinstance(generated, str) for _, generated in checks.last_samples)
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1  # the checks' own thread count is given back
