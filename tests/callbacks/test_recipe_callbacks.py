"""The recipe's callbacks on real (micro) stages: LR resume across stages, re-warmup, RoPE base switch."""

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mm_lightning.callbacks import LRSchedulerResume, ReWarmup, RoPEBaseSwitch
from mm_lightning.checkpoint import load_checkpoint
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.ops.rope import YaRN, rope_cos_sin
from mm_lightning.schedules import LRSchedule, lr_at_table
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 128}


class LRRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def run_stage(tmp_path: Path, name: str, steps: int, callbacks: list, schedule: LRSchedule | None = None):
    """``steps`` steps of a micro text stage, TensorBoard-logged; returns the module, LRs and checkpoint path."""
    schedule = schedule or LRSchedule(peak_lr=1e-2, min_lr=1e-3, warmup_steps=3, total_steps=40, decay_steps=10)
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO, schedule=schedule)
    recorder = LRRecorder()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, enable_progress_bar=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1, enable_model_summary=False,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name=name, version=0), callbacks=[*callbacks, recorder],
    )  # fmt: skip
    data = SyntheticTextDataModule(vocab_size=128, seq_len=16, batch_size=2, num_rows=2 * steps)
    trainer.fit(module, datamodule=data)
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return module, recorder.lrs, path


def logged_steps(tmp_path: Path, name: str, tag: str) -> list[int]:
    events = next((tmp_path / name / "version_0").glob("events.out.tfevents.*"))
    return [e.step for e in EventAccumulator(str(events)).Reload().Scalars(tag)]


def test_stages_continue_one_schedule_and_one_step_axis(tmp_path):
    _, lrs1, ckpt1 = run_stage(tmp_path, "text", 8, [])
    joint, lrs3, ckpt3 = run_stage(tmp_path, "joint", 6, [LRSchedulerResume(str(ckpt1))],
                                   schedule=LRSchedule(peak_lr=5.0, warmup_steps=100, total_steps=1000))  # fmt: skip
    assert joint.global_step_offset == 8 and joint.pipeline_step == 14
    assert lrs3[0] == pytest.approx(lrs1[-1])  # stage 1 was in its stable phase: no warmup jump, no new schedule
    rewarm = ReWarmup(peak_lr=3e-2, min_lr=1e-4, warmup_steps=3, total_steps=8)
    cooldown, lrs4, _ = run_stage(tmp_path, "cooldown", 8, [rewarm, LRSchedulerResume(str(ckpt3))])
    assert lrs4[0] == pytest.approx(lrs3[-1])  # the climb starts where joint pre-training left the LR
    assert lrs4[3] == pytest.approx(3e-2) and max(lrs4) == pytest.approx(3e-2)
    assert lrs4 == sorted(lrs4[:4]) + sorted(lrs4[4:], reverse=True)  # up, then down
    assert lr_at_table(cooldown.schedule_table, 22) == pytest.approx(1e-4)  # the floor at the stage's end
    meta = load_checkpoint(tmp_path / "cooldown.ckpt")["mm_lightning"]
    assert meta["global_step"] == 22 and len(meta["schedule_table"]) == 2
    # TensorBoard: the three stages' scalars sit on one global-step axis
    assert logged_steps(tmp_path, "text", "train/lr")[0] == 0
    assert logged_steps(tmp_path, "joint", "train/lr") == list(range(8, 14))
    assert logged_steps(tmp_path, "cooldown", "train/lr") == list(range(14, 22))


def test_rewarmup_needs_an_earlier_schedule(tmp_path):
    with pytest.raises(ConfigError, match="no earlier schedule"):
        run_stage(tmp_path, "alone", 2, [ReWarmup(peak_lr=1e-2, min_lr=1e-3, warmup_steps=1)])


def test_rope_switch_survives_loading_and_rebuilds_the_rotary_tables(tmp_path):
    _, _, ckpt = run_stage(tmp_path, "short", 3, [])
    assert load_checkpoint(ckpt)["mm_lightning"]["rope_base"] == 50_000.0
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO)
    module.load_state_dict(load_checkpoint(ckpt)["state_dict"])  # the stage-4 weights, base 50,000
    switch = RoPEBaseSwitch(base=800_000.0)
    switch.setup(pl.Trainer(logger=False), module, "fit")
    assert module.llm.rope_base == 50_000.0  # the validation before training still sees the model as it came
    switch.on_train_start(pl.Trainer(logger=False), module)
    assert module.llm.rope_base == 800_000.0
    # the forward uses tables built from the new base: equal to a model configured with 800,000 from the start
    reference = TextPretrainStage(llm="tiny", llm_overrides={**MICRO, "rope_base": 800_000.0})
    reference.load_state_dict(module.state_dict())
    ids = torch.randint(1, 128, (1, 12))
    torch.testing.assert_close(module.llm(ids), reference.llm(ids))
    cos_long, _ = rope_cos_sin(torch.arange(12)[None], 16, 800_000.0, torch.float32)
    cos_short, _ = rope_cos_sin(torch.arange(12)[None], 16, 50_000.0, torch.float32)
    assert not torch.allclose(cos_long, cos_short)  # the two bases give different tables
    assert not torch.allclose(module.llm(ids), TextPretrainStage(llm="tiny", llm_overrides=MICRO).llm(ids))
    # and a save/load round trip keeps 800,000 (extra state, not a persistent inv_freq buffer)
    again = TextPretrainStage(llm="tiny", llm_overrides=MICRO)
    again.load_state_dict(module.state_dict())
    assert again.llm.rope_base == 800_000.0


def test_rope_switch_with_yarn_sets_both_and_a_half_given_yarn_is_refused(tmp_path):
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO)
    switch = RoPEBaseSwitch(base=50_000.0, yarn_factor=4, original_len=256)
    switch.on_train_start(pl.Trainer(logger=False), module)
    assert module.llm.rope_base == 50_000.0 and module.llm.rope_yarn == YaRN(4.0, 256)
    RoPEBaseSwitch(base=800_000.0).on_train_start(pl.Trainer(logger=False), module)  # a plain switch clears it
    assert module.llm.rope_yarn is None
    with pytest.raises(ConfigError, match="give both or neither"):
        RoPEBaseSwitch(yarn_factor=4)
    with pytest.raises(ConfigError, match="factor > 1"):
        RoPEBaseSwitch(yarn_factor=1, original_len=256)


def test_a_schedule_without_total_steps_follows_max_steps_and_a_resumed_one_keeps_its_lengths(tmp_path):
    own = LRSchedule(peak_lr=1e-2, min_lr=1e-3, warmup_steps=2)  # no total_steps: trainer.max_steps decides
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text, lrs, ckpt = run_stage(tmp_path, "text", 10, [], schedule=own)
        joint, lrs3, _ = run_stage(tmp_path, "joint", 4, [LRSchedulerResume(str(ckpt))],
                                   schedule=LRSchedule(peak_lr=5.0, warmup_steps=1, total_steps=1000))  # fmt: skip
    assert not [w for w in caught if "schedule" in str(w.message)]  # nothing set by hand that misses the stage end
    piece = text.schedule_table[0]
    assert (piece.total_steps, piece.wsd_decay_steps) == (10, 2) and text.schedule == piece
    assert lrs[:3] == pytest.approx([0.0, 5e-3, 1e-2]) and lrs[-1] == pytest.approx(5.5e-3)  # halfway down at step 9
    assert load_checkpoint(ckpt)["mm_lightning"]["schedule_table"][0]["total_steps"] == 10  # the next stage reads it
    assert joint.schedule_table == [piece] and lrs3 == pytest.approx([1e-3] * 4)  # stage 1's table, past its end


def test_a_total_steps_set_by_hand_that_misses_the_stage_end_warns_once(tmp_path):
    schedule = LRSchedule(peak_lr=1e-2, min_lr=1e-3, warmup_steps=3, total_steps=40, decay_steps=10)
    with pytest.warns(UserWarning, match="total_steps=40 ends the LR schedule at global step 40, after") as caught:
        module, _, _ = run_stage(tmp_path, "long", 5, [], schedule=schedule)
    assert len([w for w in caught if "ends the LR schedule" in str(w.message)]) == 1
    assert module.schedule_table == [schedule]  # explicit values win
