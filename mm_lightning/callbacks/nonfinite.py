"""``NonFiniteGuard``: no training on NaN. A non-finite gradient stops the stage before it reaches the weights.

Before every optimizer step the gradients are checked (one ``isfinite`` over each local gradient or shard, and one
all-reduced flag, so every rank decides alike). A non-finite gradient either skips that optimizer step (its
gradients dropped; at most ``skip_steps`` times in a run) or stops the stage with :class:`NonFiniteLoss`, which
names the step, the loss terms and the learning rate. The checkpoint callbacks run after it, so no checkpoint
with NaN weights is written, and ``fit`` exits with code 3, which the pipeline reports as a stopped stage.

It also watches for loss spikes: the training loss's z-score against a running window of recent steps is logged
as ``train/loss_zscore``, and a step above ``spike_zscore`` prints one line naming it.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch

from mm_lightning.errors import ConfigError, Stopped

NONFINITE_EXIT_CODE = 3


class NonFiniteLoss(Stopped):
    """The loss or the gradients became NaN or infinite."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NONFINITE_EXIT_CODE)


SPIKE_MIN_HISTORY = 10
"""Steps of loss history before a spike is judged: with two, a flat start's noise read as 10 standard deviations."""
SPIKE_STD_FLOOR = 0.01
"""Least spread assumed, as a share of the mean loss: a loss within a few percent of its window is never a spike."""


class NonFiniteGuard(pl.Callback):
    """Stop (or skip a few steps) on non-finite gradients; log loss spikes.

    Args:
        skip_steps: how many optimizer steps with non-finite gradients to skip before stopping (0: stop at once).
        spike_window: steps in the running window of the loss-spike z-score.
        spike_zscore: z-score above which a step's loss is reported as a spike (``inf``: never reported).
    """

    def __init__(self, skip_steps: int = 0, spike_window: int = 50, spike_zscore: float = 6.0) -> None:
        if skip_steps < 0 or spike_window < 2:
            raise ConfigError(f"NonFiniteGuard needs skip_steps >= 0 and spike_window >= 2, got {skip_steps}, "
                              f"{spike_window}")  # fmt: skip
        self.skip_steps, self.spike_window, self.spike_zscore = skip_steps, spike_window, spike_zscore
        self.skipped = 0
        self._losses: deque[float] = deque(maxlen=spike_window)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        local_ok = all(bool(torch.isfinite(_local(g)).all()) for g in grads)
        if trainer.strategy.reduce_boolean_decision(local_ok, all=True):
            return
        step = _pipeline_step(trainer, pl_module)
        if self.skipped < self.skip_steps:
            self.skipped += 1
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # the optimizer passes over parameters without gradients
            print(f"mm-lightning: step {step}: non-finite gradients, optimizer step skipped "
                  f"({self.skipped} of {self.skip_steps} allowed)", flush=True)  # fmt: skip
            return
        raise NonFiniteLoss(_message(trainer, step, optimizer, "gradients"))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach())
        if not math.isfinite(value):  # only reachable with the gradient check skipped (a manual optimizer)
            raise NonFiniteLoss(_message(trainer, _pipeline_step(trainer, pl_module), None, "loss"))
        if len(self._losses) >= min(SPIKE_MIN_HISTORY, self.spike_window):
            mean = sum(self._losses) / len(self._losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in self._losses) / (len(self._losses) - 1))
            zscore = (value - mean) / max(std, SPIKE_STD_FLOOR * abs(mean), 1e-8)
            pl_module.log("train/loss_zscore", zscore)
            if zscore > self.spike_zscore:
                print(f"mm-lightning: loss spike at step {_pipeline_step(trainer, pl_module)}: {value:.4g} is "
                      f"{zscore:.1f} standard deviations above the last {len(self._losses)} steps' {mean:.4g}",
                      flush=True)  # fmt: skip
        self._losses.append(value)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "losses": list(self._losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self._losses.extend(float(x) for x in state_dict.get("losses", []))


_NOT_LOSSES = ("lr", "tokens", "step", "device", "throughput", "zscore")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard checks its own part


def _pipeline_step(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    return int(getattr(pl_module, "pipeline_step", trainer.global_step)) + 1  # the step being taken


def _message(trainer: pl.Trainer, step: int, optimizer: torch.optim.Optimizer | None, what: str) -> str:
    terms = {
        k: float(v) for k, v in trainer.callback_metrics.items()
        if k.startswith("train/") and v.numel() == 1 and not any(word in k for word in _NOT_LOSSES)
    }  # fmt: skip
    shown = ", ".join(f"{k.removeprefix('train/')} {v:.4g}" for k, v in terms.items()) or "not logged yet"
    optimizers = [optimizer] if optimizer is not None else trainer.optimizers
    lr = optimizers[0].param_groups[0]["lr"] if optimizers else float("nan")
    return (
        f"step {step}: the {what} became NaN or infinite (last logged: {shown}; lr {lr:.4g}); stopped before the "
        "weights were updated, nothing non-finite was saved. Lower the learning rate (or raise the warm-up), or "
        "skip a few such steps with --nonfinite.skip_steps N, then resume from the last checkpoint"
    )
