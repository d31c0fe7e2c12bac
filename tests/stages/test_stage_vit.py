"""Stage 2a (ViT + CoCa): the stage trains on packed native-resolution images and learns to retrieve."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.colour_task import COCA, VIT, ColourData, ColourPairs, collate

from mm_lightning.eval.retrieval import retrieval_recall
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.vit_coca import ViTCoCaStage


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


def _padded_colour_batch() -> dict:
    """Eight colour pairs; captions 1 and 5 lose their colour token (EOD, EOD, pad), so the colour position skips."""
    batch = collate([ColourPairs(8, seed=2)[i] for i in range(8)])
    for row in (1, 5):
        batch["caption_ids"][row] = torch.tensor([0, 0, 1])
        batch["caption_mask"][row, 2] = False
    return batch


def test_vit_coca_stage_trains_and_validates_on_the_chunked_caption_loss(one_thread):
    """``coca_loss`` (the caption term chunked from the decoder's states) equals the loss of the whole logits, its
    gradients too, and ``val/caption`` keeps the logits path's value."""
    torch.manual_seed(0)
    stage, batch = ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA, global_negatives=False), _padded_colour_batch()
    whole = stage.loss(stage(batch), batch["caption_ids"], batch["caption_mask"])
    whole["loss"].backward()
    whole_grads = {name: param.grad.clone() for name, param in stage.named_parameters()}
    stage.zero_grad()
    outputs, chunked = stage.coca_loss(batch)
    assert "caption_logits" not in outputs
    chunked["loss"].backward()
    torch.testing.assert_close(chunked, whole)
    for name, param in stage.named_parameters():
        torch.testing.assert_close(param.grad, whole_grads[name], msg=name)
    with torch.no_grad():
        stage.validation_step(batch, 0)
    torch.testing.assert_close(stage.val_caption.compute(), whole["caption"].detach())


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


class RecordScaleMoments(pl.Callback):
    """The logit scale's AdamW moments as a resumed fit starts (right after Lightning restored them)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: ViTCoCaStage) -> None:
        state = trainer.optimizers[0].state[pl_module.coca.logit_scale]
        self.moments = {key: state[key].clone() for key in ("exp_avg", "exp_avg_sq")}


def fit_micro_coca(root: Path, max_steps: int, ckpt_path: Path | None = None, callbacks=()) -> pl.Trainer:
    pl.seed_everything(0)
    stage = ViTCoCaStage(vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA,
                         schedule=LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=4))  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
        callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(stage, ColourData(), ckpt_path=ckpt_path)
    return trainer


def test_a_checkpoint_with_0d_scale_and_bias_resumes(tmp_path, one_thread):
    """A ViT CoCa checkpoint written before FSDP2 support held the logit scale and bias, and their moments, 0-d: a
    full resume loads them as ``[1]`` and steps on."""
    fit_micro_coca(tmp_path, 1).save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    names = checkpoint["mm_lightning"]["optimizer_param_names"][""]  # one device: the optimizer's order
    for name in ("coca.logit_scale", "coca.logit_bias"):
        checkpoint["state_dict"][name] = checkpoint["state_dict"][name].reshape(())
        moments = checkpoint["optimizer_states"][0]["state"][names.index(name)]
        moments.update({key: moments[key].reshape(()) for key in ("exp_avg", "exp_avg_sq")})
    torch.save(checkpoint, tmp_path / "old.ckpt")
    saved = checkpoint["optimizer_states"][0]["state"][names.index("coca.logit_scale")]
    record = RecordScaleMoments()
    trainer = fit_micro_coca(tmp_path, 2, ckpt_path=tmp_path / "old.ckpt", callbacks=[record])
    assert trainer.global_step == 2 and trainer.lightning_module.coca.logit_scale.shape == (1,)
    for key, value in record.moments.items():
        torch.testing.assert_close(value, saved[key].reshape(1), rtol=0, atol=0, msg=key)
