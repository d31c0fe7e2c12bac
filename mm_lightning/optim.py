"""Optimizers: AdamW, and Muon for 2-D hidden weights with AdamW for the rest (Kimi's Moonlight recipe).

Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") orthogonalises the
momentum of each hidden weight matrix; with ``adjust_lr_fn="match_rms_adamw"`` its update RMS matches
AdamW's, so one LR schedule drives both. Embeddings, the output head and norm gains stay on AdamW.

Under FSDP2 a matrix is a ``DTensor`` whose rows are spread over the ranks, and Newton-Schulz needs the whole
matrix: :class:`ShardedMuon` keeps the momentum sharded like its parameter and has each whole matrix orthogonalised
by one owner rank (:mod:`mm_lightning.parallel.newton_schulz`), then applies this rank's rows of the result. The
optimizer state is laid out exactly as the parameters are, so FSDP2's checkpoints save and load it like AdamW's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

# torch's own Newton-Schulz iteration and LR adjustment, so a sharded matrix gets the single-process arithmetic
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from mm_lightning.errors import ConfigError
from mm_lightning.parallel.newton_schulz import orthogonalise_all


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
    lr_scales: dict[str, float] = field(default_factory=dict)
    """LR multipliers by parameter-name prefix, e.g. ``{"vit": 0.1}``: the ViT learns at a tenth of the schedule's LR
    while the projector (and the LLM, where it trains) take it whole. The longest matching prefix applies, 1 elsewhere;
    a multiplier must be positive (a stage freezes a module instead), and a prefix must match a trained parameter."""


class ShardedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also steps FSDP2-sharded (``DTensor``) matrices, orthogonalising each whole.

    Per matrix, the arithmetic is ``torch.optim.Muon``'s, in its order (plain tensors give the same bits); the state
    (``momentum_buffer``) is ``torch.optim.Muon``'s, sharded like its parameter.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate(closure)
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            updates = []
            for grad, buffer in zip(grads, buffers, strict=True):
                buffer.lerp_(grad, 1 - group["momentum"])
                updates.append(grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer)
            coefficients, steps, eps = group["ns_coefficients"], group["ns_steps"], group["eps"]
            orthogonal = orthogonalise_all(updates, lambda m: _zeropower_via_newtonschulz(m, coefficients, steps, eps))
            for param, update in zip(params, orthogonal, strict=True):
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(group["lr"], group["adjust_lr_fn"], param.shape))
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over two inner ones, so Lightning and LR schedulers see a single optimizer.

    ``param_groups`` are the inner optimizers' own group dicts (Muon's first), so a scheduler's LR reaches both,
    and ``state`` is one dict that both inner optimizers write into. Its ``state_dict`` is therefore a standard
    torch one (parameters numbered across Muon's groups, then AdamW's), the form FSDP2's distributed checkpoint
    functions read and write; a checkpoint of the older ``{"muon": ..., "adamw": ...}`` form still loads.
    """

    def __init__(self, muon_params: list[nn.Parameter], adamw_groups: list[dict[str, Any]], lr: float,
                 config: OptimizerConfig) -> None:  # fmt: skip
        self.muon = ShardedMuon(
            muon_params,
            lr=lr,
            weight_decay=config.weight_decay,
            momentum=config.muon_momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = build_adamw(adamw_groups, lr, config)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={"lr": lr})
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Each inner optimizer loads its share (its own group defaults and state placement apply); then the
        groups and the one state dict are shared again."""
        if "muon" in state_dict:  # the older form: one state dict per inner optimizer
            parts = [state_dict["muon"], state_dict["adamw"]]
        else:
            muon_groups = len(self.muon.param_groups)
            parts = [_state_of_groups(state_dict, slice(None, muon_groups)),
                     _state_of_groups(state_dict, slice(muon_groups, None))]  # fmt: skip
        self.muon.load_state_dict(parts[0])
        self.adamw.load_state_dict(parts[1])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self.state = self.muon.state
        self.state.update(self.adamw.state)
        self.adamw.state = self.state


def evaluate(closure: Callable[[], Any] | None) -> Any:
    """An optimizer's ``closure`` run with gradients on (it recomputes the loss), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _state_of_groups(state_dict: dict[str, Any], groups: slice) -> dict[str, Any]:
    """The part of a standard optimizer ``state_dict`` that belongs to the param groups ``groups``."""
    param_groups = state_dict["param_groups"][groups]
    ids = {index for group in param_groups for index in group["params"]}
    return {"state": {k: v for k, v in state_dict["state"].items() if k in ids}, "param_groups": param_groups}


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

    Parameters fall into three kinds: 2-D hidden weights of the blocks (Muon's, under ``muon``), other matrices
    (embeddings, head, projector: weight decay) and vectors (norm gains, biases: none). Each kind is one param group,
    and one more per ``lr_scales`` multiplier that applies to some of its parameters (those groups start at
    ``lr * multiplier``, which the LR scheduler then scales like every group); the unscaled groups come first.

    Args:
        model: the module whose ``requires_grad`` parameters train.
        config: optimizer choice and hyper-parameters.
        lr: initial (peak) LR; the scheduler scales it.
    """
    scale_of = _lr_scale_lookup(model, config.lr_scales)
    kinds: dict[str, dict[float, list[nn.Parameter]]] = {"hidden": {}, "decay": {}, "no_decay": {}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.dim() < 2:
            kind = "no_decay"
        elif param.dim() == 2 and ".blocks." in f".{name}":
            kind = "hidden"
        else:
            kind = "decay"  # embeddings, output head, other matrices
        kinds[kind].setdefault(scale_of(name), []).append(param)

    def groups(*names: str, weight_decay: float) -> list[dict[str, Any]]:
        by_scale: dict[float, list[nn.Parameter]] = {1.0: []}  # the unscaled group first (even empty)
        for name in names:
            for scale, params in kinds[name].items():
                by_scale.setdefault(scale, []).extend(params)
        return [{"params": ps, "weight_decay": weight_decay, "lr": lr * scale} for scale, ps in by_scale.items()]

    if config.name == "adamw":
        decayed = groups("hidden", "decay", weight_decay=config.weight_decay)
        return build_adamw(decayed + groups("no_decay", weight_decay=0.0), lr, config)
    if config.name == "muon":
        adamw_groups = groups("decay", weight_decay=config.weight_decay) + groups("no_decay", weight_decay=0.0)
        return MuonWithAdamW(groups("hidden", weight_decay=config.weight_decay), adamw_groups, lr, config)
    raise ConfigError(f"Unknown optimizer {config.name!r}; choose 'adamw' or 'muon'.")


def _lr_scale_lookup(model: nn.Module, lr_scales: dict[str, float]) -> Callable[[str], float]:
    """A function of a parameter name giving its ``lr_scales`` multiplier (longest matching prefix, else 1).

    Raises:
        ConfigError: a multiplier that is not positive, or a prefix that matches no trained parameter.
    """
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    for prefix, scale in lr_scales.items():
        if not scale > 0:
            raise ConfigError(f"optimizer.lr_scales[{prefix!r}] = {scale}: a multiplier must be positive "
                              "(to keep a module fixed, freeze it in its stage)")  # fmt: skip
        if not any(name == prefix or name.startswith(prefix + ".") for name in trained):
            tops = sorted({name.split(".")[0] for name in trained})
            raise ConfigError(f"optimizer.lr_scales names {prefix!r}, which matches no trained parameter; "
                              f"trained modules: {', '.join(tops)}")  # fmt: skip

    def scale_of(name: str) -> float:
        matches = [prefix for prefix in lr_scales if name == prefix or name.startswith(prefix + ".")]
        return float(lr_scales[max(matches, key=len)]) if matches else 1.0

    return scale_of
