"""Learning-rate schedules as pure functions of the pipeline-global step.

Along the LLM's line of stages (text -> joint pre-training -> cooldown -> long context) one global step
counts on, and the LR is ``lr_at(schedule, global_step)``: nothing is read from a scheduler's stored
internals, so a later stage that resumes the schedule only needs the global step (and the schedule)
that the previous checkpoint recorded.

A run's whole schedule is a *table* of pieces, each starting at its ``start_step``: stage 1's WSD piece,
then (cooldown) a re-warmup piece that climbs from the LR reached so far to a new peak and decays to the
floor by the end of the stage (:func:`rewarmup_piece`). ``lr_at_table`` picks the piece in force.

Shapes: warmup-stable-decay (WSD; Hu et al. 2024, MiniCPM; the shape Kimi's Moonlight trains with) and
cosine (Loshchilov & Hutter 2017), both with a linear warmup from ``start_lr`` and a floor ``min_lr``.

A piece left without ``total_steps`` ends where its stage ends (``trainer.max_steps``; its WSD decay the last 20%):
:func:`fit_table_to_stage` gives it that length when the stage builds its optimizer, and names a length set by hand
that ends elsewhere (:func:`stage_end_mismatch`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mm_lightning.errors import ConfigError


@dataclass
class LRSchedule:
    """One piece of the global LR schedule, starting at global step ``start_step``."""

    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    """Shape: warmup-stable-decay, cosine, or constant after warmup."""
    peak_lr: float = 3e-4
    """LR reached at the end of warmup."""
    min_lr: float = 3e-5
    """LR at the end of the decay, and after it."""
    warmup_steps: int = 100
    """Linear warmup length from ``start_lr`` to ``peak_lr``."""
    total_steps: int | None = None
    """Length of this piece in steps, warmup and decay included (default: to the end of the stage, i.e. the
    trainer's ``max_steps``)."""
    decay_steps: int | None = None
    """WSD only: length of the final decay (default: the last 20% of ``total_steps``)."""
    decay_shape: Literal["linear", "cosine"] = "linear"
    """WSD only: shape of the final decay."""
    start_step: int = 0
    """Global step at which this piece begins."""
    start_lr: float = 0.0
    """LR at the start of the warmup (a re-warmup starts from the current LR)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or (self.decay_steps is not None and self.decay_steps < 0):
            raise ConfigError(
                f"LRSchedule needs warmup_steps >= 0 and decay_steps >= 0 (got warmup_steps={self.warmup_steps}, "
                f"decay_steps={self.decay_steps})"
            )
        if self.total_steps is None:  # its length comes from the stage (fit_table_to_stage)
            return
        if self.total_steps <= 0 or self.warmup_steps > self.total_steps:
            raise ConfigError(
                f"LRSchedule needs 0 <= warmup_steps <= total_steps and total_steps > 0 "
                f"(got warmup_steps={self.warmup_steps}, total_steps={self.total_steps})"
            )
        if self.kind == "wsd" and self.warmup_steps + self.wsd_decay_steps > self.total_steps:
            raise ConfigError(
                f"WSD warmup_steps ({self.warmup_steps}) + decay_steps ({self.wsd_decay_steps}) exceed "
                f"total_steps ({self.total_steps})"
            )

    @property
    def length(self) -> int:
        """``total_steps``; a piece whose length the stage has not given yet (:func:`fit_table_to_stage`) raises."""
        if self.total_steps is None:
            raise ConfigError(
                "this LR schedule has no total_steps yet: set schedule.total_steps, or trainer.max_steps so that the "
                "stage gives it its length"
            )
        return self.total_steps

    @property
    def wsd_decay_steps(self) -> int:
        """Decay length of a WSD piece: ``decay_steps`` or the last 20% of the piece."""
        return self.decay_steps if self.decay_steps is not None else max(1, self.length // 5)


def warmup_lr(step: int, warmup_steps: int, start_lr: float, peak_lr: float) -> float:
    """Linear ramp: ``start_lr`` at step 0 to ``peak_lr`` at ``warmup_steps``."""
    return start_lr + (peak_lr - start_lr) * step / warmup_steps


def decay_lr(progress: float, peak_lr: float, min_lr: float, shape: str) -> float:
    """Decay from ``peak_lr`` (progress 0) to ``min_lr`` (progress 1), linear or cosine."""
    progress = min(max(progress, 0.0), 1.0)
    factor = 1.0 - progress if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (peak_lr - min_lr) * factor


def lr_at(schedule: LRSchedule, global_step: int) -> float:
    """The learning rate of ``schedule`` at ``global_step`` (steps before ``start_step`` count as its step 0)."""
    step = max(0, global_step - schedule.start_step)
    if step < schedule.warmup_steps:
        return warmup_lr(step, schedule.warmup_steps, schedule.start_lr, schedule.peak_lr)
    if schedule.kind == "constant":
        return schedule.peak_lr
    if schedule.kind == "cosine":
        span = max(1, schedule.length - schedule.warmup_steps)
        return decay_lr((step - schedule.warmup_steps) / span, schedule.peak_lr, schedule.min_lr, "cosine")
    decay_start = schedule.length - schedule.wsd_decay_steps
    if step < decay_start:
        return schedule.peak_lr
    progress = (step - decay_start) / schedule.wsd_decay_steps
    return decay_lr(progress, schedule.peak_lr, schedule.min_lr, schedule.decay_shape)


def lr_at_table(table: Sequence[LRSchedule], global_step: int) -> float:
    """The LR of a schedule table at ``global_step``: the latest piece with ``start_step <= global_step``
    (the first piece before any of them starts)."""
    if not table:
        raise ConfigError("a schedule table needs at least one piece")
    current = table[0]
    for piece in table[1:]:
        if piece.start_step <= global_step:
            current = piece
    return lr_at(current, global_step)


def check_table(table: Sequence[LRSchedule]) -> list[LRSchedule]:
    """``table`` as a list, refusing pieces out of order (each must start after the one before)."""
    for before, after in zip(table, table[1:]):
        if after.start_step <= before.start_step:
            raise ConfigError(
                f"schedule pieces must start in increasing order; got start_step {before.start_step} "
                f"then {after.start_step}"
            )
    return list(table)


def fit_to_stage(piece: LRSchedule, stage_start: int, stage_steps: int) -> LRSchedule:
    """``piece`` ending where the stage ends (global step ``stage_start + stage_steps``) when it has no
    ``total_steps``; its WSD decay, unless set, the last 20%. A warmup that leaves no room for that decay becomes
    the first 10% (:func:`shortened_warmup` says so). A piece with a ``total_steps`` is returned as it is.

    Raises:
        ConfigError: the stage's length is unknown (``stage_steps`` < 1: no ``trainer.max_steps``), or a
            ``decay_steps`` set by hand does not fit in the stage.
    """
    if piece.total_steps is not None:
        return piece
    if stage_steps < 1:
        raise ConfigError(
            "schedule.total_steps is unset and trainer.max_steps is not set: set one of them (the schedule's "
            "length follows trainer.max_steps)"
        )
    total = stage_start + stage_steps - piece.start_step
    decay = max(1, total // 5) if piece.kind == "wsd" and piece.decay_steps is None else piece.decay_steps
    warmup = piece.warmup_steps
    if warmup + (decay if piece.kind == "wsd" and piece.decay_steps is None else 0) > total:
        warmup = total // 10
    try:
        return dataclasses.replace(piece, total_steps=total, decay_steps=decay, warmup_steps=warmup)
    except ConfigError as error:
        raise ConfigError(
            f"{error} (total_steps follows trainer.max_steps={stage_steps}): shorten schedule.decay_steps, or set "
            "schedule.total_steps"
        ) from None


def shortened_warmup(piece: LRSchedule, fitted: LRSchedule) -> str | None:
    """One line when :func:`fit_to_stage` shortened ``piece``'s warmup to fit the stage; ``None`` otherwise."""
    if fitted.warmup_steps == piece.warmup_steps:
        return None
    return (
        f"schedule.warmup_steps={piece.warmup_steps} does not fit in the stage's {fitted.length} steps "
        f"(trainer.max_steps) with its decay: warming up over {fitted.warmup_steps} steps"
    )


def fit_table_to_stage(table: Sequence[LRSchedule], stage_start: int, stage_steps: int) -> list[LRSchedule]:
    """Every piece of ``table`` without ``total_steps`` ending with the stage (:func:`fit_to_stage`)."""
    return [fit_to_stage(piece, stage_start, stage_steps) for piece in table]


def stage_end_mismatch(piece: LRSchedule, stage_start: int, stage_steps: int) -> str | None:
    """One line saying that ``piece``'s ``total_steps``, set by hand, ends it before or after the stage's last step
    (global step ``stage_start + stage_steps``); ``None`` when it ends with the stage, or nothing is set to compare."""
    if piece.total_steps is None or stage_steps < 1:
        return None
    end, stage_end = piece.start_step + piece.total_steps, stage_start + stage_steps
    if end == stage_end:
        return None
    where = "after" if end > stage_end else "before"
    return (
        f"schedule.total_steps={piece.total_steps} ends the LR schedule at global step {end}, {where} this stage's "
        f"end at {stage_end} (trainer.max_steps={stage_steps}); unset it to follow max_steps (a longer schedule is "
        "right when a later stage continues it)"
    )


def rewarmup_piece(
    table: Sequence[LRSchedule],
    start_step: int,
    peak_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_shape: Literal["linear", "cosine"] = "cosine",
) -> LRSchedule:
    """A piece that warms up from the table's LR at ``start_step`` to ``peak_lr``, then decays to ``min_lr``.

    The decay ends at ``start_step + total_steps`` (the end of the stage), cosine or linear.
    """
    start_lr = lr_at_table(table, start_step)
    if decay_shape == "cosine":
        return LRSchedule("cosine", peak_lr, min_lr, warmup_steps, total_steps, start_step=start_step,
                          start_lr=start_lr)  # fmt: skip
    return LRSchedule("wsd", peak_lr, min_lr, warmup_steps, total_steps, decay_steps=total_steps - warmup_steps,
                      decay_shape="linear", start_step=start_step, start_lr=start_lr)  # fmt: skip


def build_lr_scheduler(optimizer: Optimizer, table: LRSchedule | Sequence[LRSchedule], step_offset: int) -> LambdaLR:
    """A torch scheduler whose LR at local step ``s`` is ``lr_at_table(table, step_offset + s)``.

    The optimizer's groups must have been created with ``lr=table[0].peak_lr`` (times a group's ``lr_scales``
    multiplier: LambdaLR scales each group's own); nothing but the step count is read back from a restored
    scheduler, so the table decides the LR.
    """
    table = check_table([table] if isinstance(table, LRSchedule) else table)
    base_lr = table[0].peak_lr

    def factor(local_step: int) -> float:
        return lr_at_table(table, step_offset + local_step) / base_lr

    return LambdaLR(optimizer, factor)
