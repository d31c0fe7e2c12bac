"""The throughput monitor on a micro text stage that starts at global step 10: its tags on the pipeline-global step,
a validation's once, FLOP/s from the stage's own count, and the validation's checks kept out of training time."""

import time

import lightning.pytorch as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mm_lightning.callbacks import TokenThroughputMonitor
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 128}
CHECK_SECONDS = 1.5


class SlowCheck(pl.Callback):
    """A validation check that takes a while after the last validation batch, as the caption checks do."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            time.sleep(CHECK_SECONDS)


def test_throughput_tags_sit_on_the_global_step_and_leave_validation_out_of_training_time(tmp_path):
    stage = TextPretrainStage(llm="tiny", llm_overrides=MICRO, global_step_offset=10,
                              schedule=LRSchedule(peak_lr=1e-3, warmup_steps=1))  # fmt: skip
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="text", version=0)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=4, val_check_interval=2, limit_val_batches=2, num_sanity_val_steps=1,
        log_every_n_steps=1, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        logger=logger, callbacks=[TokenThroughputMonitor(window_size=2), SlowCheck()],
    )  # fmt: skip
    trainer.fit(stage, datamodule=SyntheticTextDataModule(vocab_size=128, seq_len=16, batch_size=2, num_rows=16))

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["train/time"] == steps["train/loss"] == [10, 11, 12, 13]  # the stage's own axis
    assert steps["validate/time"] == steps["val/loss"][1:] == [12, 14]  # once a validation, beside its figures
    assert "epoch" not in steps  # Lightning adds it only beside what it logs on its own, stage-local, step
    flops = [event.value for event in events.Scalars("train/device/flops_per_sec")]
    assert len(flops) == 3 and min(flops) > 0
    assert not [tag for tag in steps if tag.startswith("validate/") and ("flops" in tag or "mfu" in tag)]
    (trained,) = [event.value for event in events.Scalars("train/time") if event.step == 13]
    assert trained < CHECK_SECONDS  # the check after step 12's validation is not training time
