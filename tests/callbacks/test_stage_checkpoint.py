"""``StageCheckpoint``: file names on the global step, and a ``last.ckpt`` that always holds the last step."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from mm_lightning.callbacks import StageCheckpoint


class ContinuingModel(BoringModel):
    """A stage that continues a global step count from 100 and logs it as ``step``, as the joint stages do."""

    global_step_offset = 100

    def training_step(self, batch, batch_idx):
        self.log("step", float(self.global_step_offset + self.global_step))
        return super().training_step(batch, batch_idx)


def test_names_carry_the_global_step_and_last_holds_the_final_step(tmp_path: Path) -> None:
    checkpoint = StageCheckpoint(dirpath=tmp_path, filename="step{step}", auto_insert_metric_name=False, save_top_k=-1,
                                 every_n_train_steps=2, save_last=True)  # fmt: skip
    trainer = pl.Trainer(max_steps=5, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(ContinuingModel())
    assert sorted(path.name for path in tmp_path.glob("step*.ckpt")) == ["step102.ckpt", "step104.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 5  # not 4
