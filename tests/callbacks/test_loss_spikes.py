"""NonFiniteGuard's loss-spike report: a real jump is reported; a flat start's noise and a small wobble are not."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mm_lightning.callbacks import NonFiniteGuard


def _reported(losses: list[float], capsys) -> list[str]:
    guard, logged = NonFiniteGuard(), []
    module = SimpleNamespace(log=lambda name, value: logged.append(name))
    for step, loss in enumerate(losses):
        guard.on_train_batch_end(SimpleNamespace(global_step=step), module, torch.tensor(loss), None, step)
    return [line for line in capsys.readouterr().out.splitlines() if "loss spike" in line]


def test_a_flat_start_and_a_small_wobble_are_not_spikes(capsys) -> None:
    assert _reported([9.058, 9.0581, 9.066, 9.06, 9.059], capsys) == []  # read as 11 sigma with a 2-step history
    assert _reported([3.0 + 0.001 * (i % 3) for i in range(30)] + [3.1], capsys) == []  # 3% above a still window


def test_a_jump_after_a_steady_window_is_reported_with_its_step(capsys) -> None:
    (line,) = _reported([3.0 + 0.01 * (i % 3) for i in range(30)] + [4.5], capsys)
    assert line.startswith("mm-lightning: loss spike at step 31: 4.5 is") and "last 30 steps' 3.01" in line
