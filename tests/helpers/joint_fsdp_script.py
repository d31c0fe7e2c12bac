"""Run by ``tests/stages/test_stage_joint.py`` in a subprocess: JointStage under FSDP2 on 2 CPU processes (gloo).

With one sample per rank and step at a 30% multimodal share, some steps give one rank an image and the other
none (that rank must still join the vision tower's collectives), and some give neither rank one.
Usage: ``PYTHONPATH=tests python tests/helpers/joint_fsdp_script.py TEXT_CKPT ALIGN_CKPT OUT_DIR``.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import ModelParallelStrategy

from helpers.pattern_sources import mixture  # registers the pattern sources
from mm_lightning.stages import JointStage


class RecordImages(pl.Callback):
    def __init__(self) -> None:
        self.has_images: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, *args) -> None:
        self.has_images.append(batch.get("patches") is not None)


def main() -> None:
    text_ckpt, align_ckpt, out = sys.argv[1:4]
    pl.seed_everything(0)
    module = JointStage(text_ckpt, align_ckpt, handoff="weights_only")
    recorder = RecordImages()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(module, mixture(0.3, samples_per_batch=1))
    Path(out, f"rank{trainer.global_rank}.txt").write_text("".join("1" if h else "0" for h in recorder.has_images))


if __name__ == "__main__":
    main()
