"""Optimizers: AdamW, and Muon for 2-D hidden weights with AdamW for the rest (Kimi's Moonlight recipe).

Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") orthogonalises the
momentum of each hidden weight matrix; with ``adjust_lr_fn="match_rms_adamw"`` its update RMS matches
AdamW's, so one LR schedule drives both. Embeddings, the output head and norm gains stay on AdamW.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mm_lightning.errors import ConfigError


@dataclass
class OptimizerConfig:
    """Optimizer choice and its hyper-parameters (the LR comes from the schedule)."""

    name: Literal["adamw", "muon"] = "adamw"
    """``adamw``, or ``muon`` (Muon for 2-D hidden weights, AdamW for embeddings, head and norms)."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices; norm gains and biases get none."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    muon_momentum: float = 0.95
    """Muon momentum (Nesterov)."""


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over two inner ones, so Lightning and LR schedulers see a single optimizer.

    ``param_groups`` are the inner optimizers' own group dicts, so a scheduler's LR reaches both.
    """

    def __init__(self, muon_params: list[nn.Parameter], adamw_groups: list[dict[str, Any]], lr: float,
                 config: OptimizerConfig) -> None:  # fmt: skip
        self.muon = torch.optim.Muon(
            muon_params,
            lr=lr,
            weight_decay=config.weight_decay,
            momentum=config.muon_momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = build_adamw(adamw_groups, lr, config)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def build_adamw(groups: list[dict[str, Any]], lr: float, config: OptimizerConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``groups``, with the fused kernel where it runs.

    PyTorch picks the fused (one kernel per parameter) implementation only when asked; its default is a
    for-loop on CPU (five times slower there) and ``foreach`` on CUDA. Sharded (``DTensor``) parameters and
    other devices keep PyTorch's default.
    """
    params = [param for group in groups for param in group["params"]]
    fused = all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps, fused=fused)


def build_optimizer(model: nn.Module, config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """Build the optimizer over ``model``'s trainable parameters.

    Args:
        model: the module whose ``requires_grad`` parameters train.
        config: optimizer choice and hyper-parameters.
        lr: initial (peak) LR; the scheduler scales it.
    """
    hidden_matrices, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.dim() < 2:
            no_decay.append(param)
        elif param.dim() == 2 and ".blocks." in f".{name}":
            hidden_matrices.append(param)
        else:
            decay.append(param)  # embeddings, output head, other matrices
    if config.name == "adamw":
        groups = [{"params": hidden_matrices + decay, "weight_decay": config.weight_decay}]
        groups.append({"params": no_decay, "weight_decay": 0.0})
        return build_adamw(groups, lr, config)
    if config.name == "muon":
        adamw_groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return MuonWithAdamW(hidden_matrices, adamw_groups, lr, config)
    raise ConfigError(f"Unknown optimizer {config.name!r}; choose 'adamw' or 'muon'.")
