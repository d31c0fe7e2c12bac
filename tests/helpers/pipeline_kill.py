"""A test-only callback that kills the whole pipeline (its process group) at a chosen step of one stage.

It kills only while ``MM_TEST_KILL_PIPELINE`` is set, so the rerun uses the same config and resumes it.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class KillPipelineAtStep(Callback):
    """SIGKILL the process group (the pipeline and this stage) before training step ``step`` runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if os.environ.get("MM_TEST_KILL_PIPELINE") and trainer.global_step >= self.step:
            os.killpg(os.getpgid(0), signal.SIGKILL)
