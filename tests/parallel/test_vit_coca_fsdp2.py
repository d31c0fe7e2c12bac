"""The ViT CoCa stage under FSDP2 on 2 gloo processes: its 1-element logit scale and bias shard, train and save.

``fully_shard`` refuses 0-d parameters, which the logit scale and bias once were (``configs/vit_coca/so400m_fsdp2.yaml``
then failed in ``configure_model``). The run (``helpers/vit_coca_fsdp2.py``, ~15 s) trains 2 steps and saves a full
checkpoint, from which the CoCa heads load with the trained values.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.vit_coca_fsdp2 import SCALARS

from mm_lightning.checkpoint import load_backbone


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vit_coca_fsdp2")
    tests = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(tests / "helpers" / "vit_coca_fsdp2.py"), str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=out)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_vit_coca_stage_trains_under_fsdp2(run):
    result = torch.load(run / "result.pt", weights_only=True)
    assert result["sharded"] and math.isfinite(result["loss"])
    for name in SCALARS:
        assert result["trained"][name].shape == (1,)
        assert not torch.equal(result["trained"][name], result["initial"][name]), f"{name} did not train"


def test_its_fsdp2_checkpoint_loads_the_trained_scale_and_bias(run):
    result, heads = torch.load(run / "result.pt", weights_only=True), load_backbone(run / "vit_coca.ckpt", "coca")
    for name in SCALARS:
        torch.testing.assert_close(heads.get_parameter(name).detach(), result["trained"][name], rtol=0, atol=0)
