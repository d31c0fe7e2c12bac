"""Every stage validates at its last step: between two ``val_check_interval``s, once on an interval, never on a
resume that had nothing left to train (``mm-lightning fit``'s ``after_fit`` validates that one)."""

from pathlib import Path

import lightning.pytorch as pl

from mm_lightning.callbacks import FinalValidation
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.fit import build_cli
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 128}
ROOT = Path(__file__).resolve().parents[2]


class ValidationSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps.append(trainer.global_step)


def validated_steps(max_steps: int, interval: int, final: bool, ckpt_path: Path | None = None) -> list[int]:
    """The global steps at which a micro text stage validates, with or without ``FinalValidation``."""
    seen = ValidationSteps()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, val_check_interval=interval, check_val_every_n_epoch=None,
        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[seen, *([FinalValidation()] if final else [])],
    )  # fmt: skip
    module = TextPretrainStage(llm="tiny", llm_overrides=MICRO, schedule=LRSchedule(peak_lr=1e-3, warmup_steps=1))
    trainer.fit(module, SyntheticTextDataModule(vocab_size=128, seq_len=16, batch_size=2, num_rows=64),
                ckpt_path=ckpt_path)  # fmt: skip
    if ckpt_path is None:
        trainer.save_checkpoint(Path(trainer.default_root_dir) / "end.ckpt")
    return seen.steps


def test_a_stage_validates_at_its_last_step_between_two_intervals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert validated_steps(5, 3, final=False) == [3]  # Lightning alone: the last two steps are never validated
    assert validated_steps(5, 3, final=True) == [3, 5]
    assert validated_steps(6, 3, final=True) == [3, 6]  # the last step on an interval: validated once


def test_a_resume_with_nothing_left_to_train_is_not_validated_by_the_callback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    validated_steps(4, 3, final=True)
    assert validated_steps(4, 3, final=True, ckpt_path=tmp_path / "end.ckpt") == []  # after_fit validates it once


def test_every_fit_has_the_final_validation():
    cli = build_cli(["--config", str(ROOT / "configs" / "text_pretrain" / "tiny.yaml")], run=False)
    assert sum(isinstance(callback, FinalValidation) for callback in cli.trainer.callbacks) == 1
