"""Kimi-VL's long-context switch: a larger RoPE base (50,000 -> 800,000) and a longer sequence length.

Optionally the switch also scales the frequencies by YaRN (``yarn_factor``, ``original_len``; ``ops/rope.py``):
the pairs that never turned once over the trained rows are slowed by the factor, the fast ones kept. On the long
demo's stage 5 it found far needles a 4x base missed and lost the look-up at stage 1's length (README, "YaRN, a base
of 100,000, more steps"), so the demos switch the base alone.

The callback owns *when*: by default the stage's first step, else a given global step. By default the data's
length changes in ``setup`` (the training loader is built before any hook of the first step) and the base
in ``on_train_start``, after the validation of the starting weights: that validation (and a passkey check in
it) then measures the model as it came, before the switch. The model owns the
base (``LLM.set_rope_base``: run-time state saved in its ``state_dict``, so checkpoints and exports carry it,
and the rotary tables are computed from it on every forward, never cached in a buffer that a load could
revert); the datamodule owns the length (``set_seq_len``). Both values are logged every step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from mm_lightning.errors import ConfigError
from mm_lightning.ops.rope import YaRN


class RoPEBaseSwitch(pl.Callback):
    """Set the LLM's RoPE base (and optionally the data's sequence length) at a global step.

    Args:
        base: the new RoPE base (Kimi-VL: 800,000).
        seq_len: the new sequence length, handed to the datamodule's ``set_seq_len`` (None: unchanged).
        at_step: global step of the switch (default: this stage's first step). A later step switches the base
            there; a new ``seq_len`` then reaches the data only when its training loader is next built.
        yarn_factor: also scale the frequencies by YaRN with this factor (the new rows' length over the old; None:
            plain RoPE at ``base``). Needs ``original_len``.
        original_len: the row length trained before the switch (YaRN's reference length).
    """

    def __init__(self, base: float = 800_000.0, seq_len: int | None = None, at_step: int | None = None,
                 yarn_factor: float | None = None, original_len: int | None = None) -> None:  # fmt: skip
        if base <= 0:
            raise ConfigError(f"RoPEBaseSwitch base must be positive, got {base}")
        if (yarn_factor is None) != (original_len is None):
            raise ConfigError("RoPEBaseSwitch yarn_factor and original_len go together: give both or neither, got "
                              f"yarn_factor={yarn_factor}, original_len={original_len}")  # fmt: skip
        try:
            self.yarn = None if yarn_factor is None else YaRN(float(yarn_factor), int(original_len))
        except ValueError as error:
            raise ConfigError(f"RoPEBaseSwitch: {error}") from None
        self.base, self.seq_len, self.at_step = float(base), seq_len, at_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.at_step is None:
            self._set_seq_len(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_step is None:
            self._set_rope(pl_module)
            rank_zero_info(f"RoPEBaseSwitch: RoPE base {self.base:g}{self._yarn_note()}, sequence length "
                           f"{self.seq_len or 'unchanged'}")  # fmt: skip

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.at_step is not None and pl_module.pipeline_step == self.at_step:
            self._switch(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        logged = {"train/rope_base": pl_module.llm.rope_base}
        seq_len = getattr(trainer.datamodule, "seq_len", None)
        if seq_len is not None:
            logged["train/seq_len"] = float(seq_len)
        pl_module.log_dict(logged, on_step=True, on_epoch=False)

    def _switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_rope(pl_module)
        self._set_seq_len(trainer)
        rank_zero_info(f"RoPEBaseSwitch: RoPE base {self.base:g}{self._yarn_note()} at global step "
                       f"{pl_module.pipeline_step}")  # fmt: skip

    def _set_rope(self, pl_module: pl.LightningModule) -> None:
        pl_module.llm.set_rope_base(self.base)
        pl_module.llm.set_rope_yarn(self.yarn)

    def _yarn_note(self) -> str:
        yarn = self.yarn
        return "" if yarn is None else f" with YaRN x{yarn.factor:g} from {yarn.original_len} tokens"

    def _set_seq_len(self, trainer: pl.Trainer) -> None:
        if self.seq_len is not None:
            if not hasattr(trainer.datamodule, "set_seq_len"):
                name = type(trainer.datamodule).__name__
                raise ConfigError(f"RoPEBaseSwitch seq_len needs a datamodule with set_seq_len; {name} has none")
            trainer.datamodule.set_seq_len(self.seq_len)
