"""The ``continue`` hand-off gives every parameter exactly its own saved moments, from a one-device checkpoint and
from a 2-process FSDP2 one.

The two save paths number the optimizer state differently: one device saves ``optimizer.state_dict()`` (the optimizer's
order: AdamW's decayed matrices, hidden ones first, then the rest), FSDP2's full checkpoint re-keys the gathered state
by module position (the embedding first). The micro LLM's two blocks hold same-shape parameters with different
moments, so a mismatch that passes the shape check still shows. Checkpoints written before the numbering was recorded
(``older``) are read by the order their own weights give.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.handoff_fsdp2 import OPTIMIZERS, fit, micro_stage

from mm_lightning.checkpoint import META_KEY
from mm_lightning.errors import ConfigError
from mm_lightning.handoff import carry_optimizer_state
from mm_lightning.optim import build_optimizer

FORMS = ("recorded", "older")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AdamW and Muon checkpoints, each from one device and from 2 FSDP2 processes (~25 s), with their moments."""
    out = tmp_path_factory.mktemp("handoff_order")
    tests = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(tests / "helpers" / "handoff_fsdp2.py"), str(out)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=out)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for optimizer in OPTIMIZERS:
        fit(out, optimizer, devices=1)
    return out


def written_before_the_numbering_was_recorded(path: Path) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint[META_KEY]["optimizer_state_names"]
    older = path.with_name(f"older_{path.name}")
    torch.save(checkpoint, older)
    return older


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("devices", ["fsdp2", "single"])
def test_continue_hands_every_parameter_its_own_moments(checkpoints, devices, optimizer, form):
    path = checkpoints / f"{optimizer}_{devices}.ckpt"
    if form == "older":
        path = written_before_the_numbering_was_recorded(path)
    saved = torch.load(checkpoints / f"{optimizer}_{devices}_moments.pt", weights_only=True)["state"]  # by name
    moments = {name: [v for k, v in state.items() if k != "step"] for name, state in saved.items()}
    for name, values in moments.items():  # a swap between same-shape parameters would show
        for other, other_values in moments.items():
            if other != name and values[0].shape == other_values[0].shape:
                assert not torch.equal(values[0], other_values[0]), (name, other)
    stage = micro_stage(optimizer)
    fresh_optimizer = build_optimizer(stage, stage.optimizer_config, lr=1e-2)
    carried, fresh = carry_optimizer_state(fresh_optimizer, stage, str(path))
    assert fresh == [] and sorted(carried) == sorted(saved)
    for name, param in stage.named_parameters():
        state = fresh_optimizer.state[param]
        assert state.keys() == saved[name].keys(), name
        for key, value in saved[name].items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{name} {key}")


def test_an_older_fsdp2_checkpoint_whose_weights_do_not_give_the_order_is_refused(checkpoints, tmp_path):
    older = written_before_the_numbering_was_recorded(checkpoints / "adamw_fsdp2.ckpt")
    checkpoint = torch.load(older, weights_only=True)
    checkpoint["state_dict"] = dict(reversed(checkpoint["state_dict"].items()))  # its keys no longer in module order
    torch.save(checkpoint, tmp_path / "reordered.ckpt")
    stage = micro_stage("adamw")
    optimizer = build_optimizer(stage, stage.optimizer_config, lr=1e-2)
    with pytest.raises(ConfigError, match="numbered by module position"):
        carry_optimizer_state(optimizer, stage, str(tmp_path / "reordered.ckpt"))
