"""Stages 3-5 (JointStage) on micro checkpoints: hand-off modes, mixed and text-only batches, RoPE switch."""

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.colour_task import COCA, VIT, ColourData
from helpers.pattern_sources import mixture

from mm_lightning.callbacks import LRSchedulerResume, ProgressiveMixing, RoPEBaseSwitch
from mm_lightning.checkpoint import load_checkpoint
from mm_lightning.data.mixture.plan import epoch_item
from mm_lightning.data.mixture.sources import register_source, source_kind
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.handoff import carry_optimizer_state
from mm_lightning.media.interleave import MixSample
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.schedules import LRSchedule, lr_at_table
from mm_lightning.stages import AlignStage, JointStage, TextPretrainStage, ViTCoCaStage
from mm_lightning.tokenizer import IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID

LLM = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 64}
STAGE1 = LRSchedule(peak_lr=3e-3, min_lr=3e-4, warmup_steps=2, total_steps=100, decay_steps=20)  # stable at the end


class LRRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(module, data, tmp_path: Path, steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, default_root_dir=tmp_path, callbacks=list(callbacks))  # fmt: skip
    trainer = pl.Trainer(**{**options, **kwargs})
    trainer.fit(module, data)
    return trainer


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """Micro stage-1, stage-2a and alignment checkpoints, and stage 1's LRs."""
    tmp = tmp_path_factory.mktemp("chain")
    pl.seed_everything(0)
    recorder = LRRecorder()
    data = SyntheticTextDataModule(vocab_size=64, seq_len=16, batch_size=4, num_rows=32)
    text = fit(TextPretrainStage(llm="tiny", llm_overrides=LLM, schedule=STAGE1), data, tmp, 6, [recorder])
    text.save_checkpoint(tmp / "text.ckpt")
    short = LRSchedule(peak_lr=3e-3, warmup_steps=1, total_steps=5)
    vit = fit(ViTCoCaStage(vit_overrides=VIT, coca_overrides=COCA, schedule=short), ColourData(), tmp, 2)
    vit.save_checkpoint(tmp / "vit.ckpt")
    align = fit(AlignStage(str(tmp / "text.ckpt"), str(tmp / "vit.ckpt"), schedule=short), ColourData(), tmp, 2)
    align.save_checkpoint(tmp / "align.ckpt")
    return {"dir": tmp, "text": tmp / "text.ckpt", "align": tmp / "align.ckpt", "stage1_lrs": recorder.lrs}


def test_joint_pretraining_continues_stage_1_and_mixes_progressively(chain, tmp_path):
    ignored = LRSchedule(peak_lr=9.0, warmup_steps=50, total_steps=500)  # the stage continues stage 1's instead
    joint = JointStage(str(chain["text"]), str(chain["align"]), handoff="continue", schedule=ignored)
    recorder, mixing = LRRecorder(), ProgressiveMixing(start=0.0, end=0.5)
    trainer = fit(joint, mixture(), tmp_path, 6, [recorder, mixing, LRSchedulerResume(str(chain["text"]))])
    assert joint.global_step_offset == 6 and recorder.lrs[0] == pytest.approx(chain["stage1_lrs"][-1])
    assert mixing.schedule.ramp_samples == 6 * 4  # the whole stage
    assert trainer.callback_metrics["mix/scheduled_share"] > 0.3  # the last batch is late in the ramp
    trainer.save_checkpoint(tmp_path / "joint.ckpt")
    meta = load_checkpoint(tmp_path / "joint.ckpt")["mm_lightning"]
    assert meta["global_step"] == 12 and set(meta["backbones"]) == {"llm", "vit", "projector"}


def test_continue_carries_matching_moments_and_weights_only_starts_fresh(chain, tmp_path):
    module = JointStage(str(chain["text"]), str(chain["align"]), handoff="continue")
    optimizer = build_optimizer(module, OptimizerConfig(), lr=1e-3)
    carried, fresh = carry_optimizer_state(optimizer, module, str(chain["text"]))
    assert carried and all(n.startswith("llm.") for n in carried) and all(not n.startswith("llm.") for n in fresh)
    saved = load_checkpoint(chain["text"])
    names = saved["mm_lightning"]["optimizer_param_names"][""]
    index = names.index(carried[0])
    param = dict(module.named_parameters())[carried[0]]
    torch.testing.assert_close(
        optimizer.state[param]["exp_avg"], saved["optimizer_states"][0]["state"][index]["exp_avg"]
    )

    own = LRSchedule(peak_lr=1e-3, warmup_steps=2, total_steps=10)
    scratch, recorder = (
        JointStage(str(chain["text"]), str(chain["align"]), handoff="weights_only", schedule=own),
        LRRecorder(),
    )
    fit(scratch, mixture(0.5), tmp_path, 2, [recorder])
    assert scratch.global_step_offset == 0 and recorder.lrs == [lr_at_table([own], 0), lr_at_table([own], 1)]
    with pytest.raises(ConfigError, match="handoff"):
        JointStage(str(chain["text"]), str(chain["align"]), handoff="optimizer_only")


def test_a_muon_stage_takes_adamw_moments_for_its_adamw_part_only(chain):
    """AdamW's moments carry into Muon's AdamW part (embeddings, norms); the hidden matrices' Muon momentum, which
    AdamW never made, starts fresh (and the reverse hand-off likewise)."""
    module = JointStage(str(chain["text"]), str(chain["align"]), handoff="continue")
    optimizer = build_optimizer(module, OptimizerConfig(name="muon"), lr=1e-3)
    carried, fresh = carry_optimizer_state(optimizer, module, str(chain["text"]))
    hidden = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    named = dict(module.named_parameters())
    assert carried and all(n.startswith("llm.") and id(named[n]) not in hidden for n in carried)
    assert any(n.startswith("llm.") and id(named[n]) in hidden for n in fresh)
    assert not any(optimizer.muon.state[p] for group in optimizer.muon.param_groups for p in group["params"])


def test_text_only_batches_leave_the_vision_tower_alone(chain, tmp_path):
    joint = JointStage(str(chain["text"]), str(chain["align"]), handoff="weights_only")
    before = {n: p.detach().clone() for n, p in joint.named_parameters()}
    fit(joint, mixture(0.0), tmp_path, 3)
    after = dict(joint.named_parameters())
    vision = [n for n in before if n.startswith(("vit.", "projector."))]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)  # no gradient, so no update at all
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("llm."))


def test_long_context_loads_the_cooldown_checkpoint_with_the_new_base(chain, tmp_path):
    joint = JointStage(str(chain["text"]), str(chain["align"]), handoff="weights_only")
    fit(joint, mixture(0.5), tmp_path, 1).save_checkpoint(tmp_path / "cooldown.ckpt")
    long = JointStage(str(tmp_path / "cooldown.ckpt"), handoff="continue")
    assert long.llm.rope_base == 50_000.0
    data = mixture(0.5)
    trainer = fit(long, data, tmp_path, 2, [RoPEBaseSwitch(base=800_000.0, seq_len=96)])
    assert long.llm.rope_base == 800_000.0 and data.seq_len == 96
    assert trainer.callback_metrics["train/rope_base"] == 800_000.0
    trainer.save_checkpoint(tmp_path / "long.ckpt")
    saved = load_checkpoint(tmp_path / "long.ckpt")
    assert saved["mm_lightning"]["rope_base"] == 800_000.0
    reloaded = JointStage(str(tmp_path / "long.ckpt"), handoff="weights_only")
    assert reloaded.llm.rope_base == 800_000.0  # rebuilt from the recorded base, not a stale buffer


@pytest.mark.slow
def test_fsdp2_ranks_with_and_without_images_do_not_hang(chain, tmp_path):
    tests = Path(__file__).resolve().parents[1]  # on the path, so the script imports ``helpers``
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    script = tests / "helpers" / "joint_fsdp_script.py"
    cmd = [sys.executable, str(script), str(chain["text"]), str(chain["align"]), str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    steps = list(zip(*ranks))
    assert len(steps) == 8
    assert {"10", "01"} & {a + b for a, b in steps}  # a step where only one rank had an image
    assert ("0", "0") in steps  # and one where no rank had any (the vision tower sits out on both)


COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])


class ColourSource:
    """A solid-colour image (2 x 2 patches of 8 pixels, slight noise) captioned by its colour's token (10-13)."""

    multimodal = True

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        return 64

    def sample(self, k: int) -> MixSample:
        colour = epoch_item(k, 64, 0, self.name) % 4
        noise = 0.05 * torch.randn(4, 192, generator=torch.Generator().manual_seed(k))
        patches = COLOURS[colour].repeat_interleave(64).repeat(4, 1) + noise  # [4, 3 * 8 * 8]
        ids = [IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID, 10 + int(colour), 0]
        return MixSample(ids, [(patches, (2, 2))], [False] * 3 + [True] * 2, self.name)


try:
    source_kind("colour_words")
except ConfigError:
    register_source("colour_words", multimodal=True)(lambda spec, ctx: ColourSource(spec.name))


def test_the_vision_path_carries_what_the_caption_needs(chain, tmp_path):
    """End to end (ViT -> projector -> spliced into the LLM): the joint stage learns colour -> word from pixels."""

    def colours() -> MixtureDataModule:
        return MixtureDataModule([{"name": "c", "kind": "colour_words", "path": "-"}], None, seq_len=64,
                                 samples_per_batch=8, patch_size=8, max_patches=32, seed=0, val_batches=1)  # fmt: skip

    constant = LRSchedule(kind="constant", peak_lr=3e-3, warmup_steps=5, total_steps=200)
    joint = JointStage(str(chain["text"]), str(chain["align"]), handoff="weights_only", schedule=constant)
    fit(joint, colours(), tmp_path, 100)
    data = colours()
    data.setup("fit")
    batch = next(iter(data.batches("train", 500, 501)))  # samples the stage never trained on

    def caption_loss(patches: torch.Tensor) -> float:
        with torch.no_grad():
            tokens = joint.vlm.image_tokens(patches, batch["grid_hw"], batch["patch_seq_ids"])
            splice = (batch["input_ids"] == IMAGE_ID, tokens)
            logits = joint.llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               seq_ids=batch["seq_ids"], replace_embeds=splice)  # fmt: skip
            return float(joint.loss(logits, batch["labels"])["loss"])

    n_images = batch["grid_hw"].shape[0]
    rolled = batch["patches"][0].reshape(n_images, 4, -1).roll(1, dims=0).reshape(batch["patches"].shape)
    assert caption_loss(batch["patches"]) < 0.1 < 1.0 < caption_loss(rolled)  # another image's colour misleads it


def test_full_resume_of_a_joint_stage_matches_the_uninterrupted_run(chain, tmp_path):
    """The third hand-off mode, ``--ckpt_path``: weights, optimizer, LR step and data position all continue."""

    def stage() -> JointStage:
        torch.manual_seed(0)
        return JointStage(str(chain["text"]), str(chain["align"]), handoff="continue")

    resume = [LRSchedulerResume(str(chain["text"]))]
    straight = stage()
    fit(straight, mixture(0.5), tmp_path / "a", 4, resume)
    first = stage()
    fit(first, mixture(0.5), tmp_path / "b", 2, resume).save_checkpoint(tmp_path / "half.ckpt")
    second, recorder = stage(), LRRecorder()
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[*resume, recorder])  # fmt: skip
    trainer.fit(second, mixture(0.5), ckpt_path=tmp_path / "half.ckpt")
    assert second.pipeline_step == straight.pipeline_step == 10 and len(recorder.lrs) == 2
    for (name, a), b in zip(straight.named_parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
