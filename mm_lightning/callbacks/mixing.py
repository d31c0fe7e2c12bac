"""Progressive mixing: the multimodal share of the joint pre-training data rises over the stage.

Kimi-VL raises the share of multimodal data gradually during joint pre-training (to about 40% here by
default). The callback owns the schedule (from YAML) and hands it to the datamodule before its loaders are
built; which sample is multimodal is then a pure function of the sample index and the seed inside the
datamodule (a quota rule, so every window of samples follows the ramp). Every step it logs the realised
share of the batch, in samples and in tokens, beside the scheduled one.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl

from mm_lightning.data.mixture.packing import mixture_stats
from mm_lightning.data.mixture.plan import ShareSchedule, scheduled_share
from mm_lightning.errors import ConfigError


class ProgressiveMixing(pl.Callback):
    """Hand a rising multimodal-share schedule to the datamodule and log the realised share.

    Args:
        start: multimodal share of samples at the stage's first sample.
        end: share at the end of the ramp and after it.
        ramp_samples: samples of the ramp (default: the whole stage, ``max_steps`` x samples per step).
        shape: ``linear``, ``step`` (``steps`` equal stairs) or ``constant`` (``end`` throughout).
        steps: stairs of the ``step`` shape.
    """

    def __init__(
        self,
        start: float = 0.0,
        end: float = 0.4,
        ramp_samples: int | None = None,
        shape: Literal["linear", "step", "constant"] = "linear",
        steps: int = 4,
    ) -> None:
        self.start, self.end, self.ramp_samples, self.shape, self.steps = start, end, ramp_samples, shape, steps
        self.schedule: ShareSchedule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "set_share_schedule"):
            raise ConfigError(f"ProgressiveMixing needs a datamodule with set_share_schedule, not {type(datamodule)}")
        ramp = self.ramp_samples
        if ramp is None:
            per_step = datamodule.samples_per_batch * trainer.world_size * trainer.accumulate_grad_batches
            ramp = max(1, trainer.max_steps) * per_step
        self.schedule = ShareSchedule(self.start, self.end, ramp, self.shape, self.steps)
        datamodule.set_share_schedule(self.schedule)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self.schedule is None or "sample_multimodal" not in batch:
            return
        logged = mixture_stats(batch)
        indices = batch["sample_index"].tolist()
        logged["mix/scheduled_share"] = sum(scheduled_share(self.schedule, i) for i in indices) / max(1, len(indices))
        pl_module.log_dict(logged, on_step=True, on_epoch=False)
