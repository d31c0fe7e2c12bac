"""``FinalValidation``: every stage validates at its last step, whatever ``val_check_interval`` says.

Lightning validates every ``val_check_interval`` batches and at the end of an epoch, but a run that stops at
``max_steps`` between two intervals (``--trainer.max_steps 20`` with an interval of 50) ends without a validation,
so the stage's last figures are missing and the pipeline summary calls its metric unchanged. At the batch that
reaches ``max_steps`` this callback asks the trainer to stop the way early stopping does (``trainer.should_stop``),
and Lightning then validates before it leaves the loop: once, also when that batch was a validation step anyway.

A run resumed at its last step trains no batch; ``mm-lightning fit`` validates it after the fit
(:meth:`~mm_lightning.fit.MMLightningCLI.after_fit`), so no run validates its last step twice.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


class FinalValidation(pl.Callback):
    """Validate at the step that reaches ``trainer.max_steps``, even between two ``val_check_interval``s."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates before stopping (as for early stopping)
