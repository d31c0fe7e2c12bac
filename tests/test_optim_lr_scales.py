"""``OptimizerConfig.lr_scales``: a module learns at a multiple of the schedule's LR, under AdamW and Muon alike."""

import pytest
import torch
from torch import nn

from mm_lightning.errors import ConfigError
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.schedules import LRSchedule, build_lr_scheduler


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vit = nn.Module()
        self.vit.blocks = nn.ModuleList([nn.Linear(4, 4)])
        self.vit.norm = nn.LayerNorm(4)
        self.projector = nn.Linear(4, 4)


def _lr_by_param(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_scaled_modules_follow_the_schedule_at_their_multiple(name: str) -> None:
    model = TwoTowers()
    optimizer = build_optimizer(model, OptimizerConfig(name=name, lr_scales={"vit": 0.1, "vit.norm": 0.5}), lr=1e-2)
    scheduler = build_lr_scheduler(optimizer, LRSchedule(kind="cosine", peak_lr=1e-2, min_lr=0.0, warmup_steps=4,
                                                         total_steps=20), step_offset=0)  # fmt: skip
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = _lr_by_param(optimizer, model)
    base = lrs["projector.weight"]
    assert 0 < base < 1e-2  # in warmup
    assert lrs["projector.bias"] == pytest.approx(base)
    assert lrs["vit.blocks.0.weight"] == pytest.approx(0.1 * base)  # a hidden matrix (Muon's under muon)
    assert lrs["vit.blocks.0.bias"] == pytest.approx(0.1 * base)
    assert lrs["vit.norm.weight"] == pytest.approx(0.5 * base)  # the longest prefix wins
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base)  # the logged LR is the schedule's own


def test_without_scales_the_groups_are_unchanged() -> None:
    optimizer = build_optimizer(TwoTowers(), OptimizerConfig(), lr=1e-3)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 4]  # matrices; vectors
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1, 0.0}


BAD_SCALES = [({"vti": 0.1}, "matches no trained parameter; trained modules: projector, vit"),
              ({"vit": 0.0}, "must be positive")]  # fmt: skip


@pytest.mark.parametrize(("scales", "message"), BAD_SCALES)
def test_bad_scales_are_refused_by_name(scales: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_optimizer(TwoTowers(), OptimizerConfig(lr_scales=scales), lr=1e-3)
