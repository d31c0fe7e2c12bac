"""Stage hand-off of optimizer state: an earlier stage's Adam/Muon moments for the parameters that match.

Three hand-off modes exist between stages (set in YAML):

* full resume (same stage): Lightning's ``ckpt_path``: weights, optimizer, scheduler, data position;
* ``continue`` (a new stage that continues, as OLMo 2 did between stages): weights, the optimizer moments of
  every parameter whose name and shape match (new parameters start fresh), and the global step and LR
  schedule (``LRSchedulerResume``);
* ``weights_only``: weights; fresh optimizer; the stage's own schedule.

A checkpoint's optimizer state is indexed by position, so every stage records the parameter names in each
inner optimizer's order (``optimizer_param_names``); the moments are then matched by name.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import distribute_tensor

from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import ConfigError

HANDOFF_MODES = ("continue", "weights_only")


def inner_optimizers(optimizer: torch.optim.Optimizer) -> dict[str, torch.optim.Optimizer]:
    """The torch optimizers whose state dicts hold the moments: ``{"": opt}``, or Muon's and AdamW's."""
    if hasattr(optimizer, "muon") and hasattr(optimizer, "adamw"):
        return {"muon": optimizer.muon, "adamw": optimizer.adamw}
    return {"": optimizer}


def optimizer_param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[str]]:
    """Per inner optimizer, its parameters' names in state-dict index order."""
    names = {id(param): name for name, param in module.named_parameters()}
    return {
        key: [names[id(p)] for group in inner.param_groups for p in group["params"]]
        for key, inner in inner_optimizers(optimizer).items()
    }


def carry_optimizer_state(
    optimizer: torch.optim.Optimizer, module: nn.Module, checkpoint_path: str
) -> tuple[list[str], list[str]]:
    """Copy the moments of matching parameters from a checkpoint into a freshly built ``optimizer``.

    Returns:
        The names that received earlier moments, and the trainable names that start fresh.

    Raises:
        ConfigError: the checkpoint records no parameter names (written before they were recorded) or its
            optimizer is of another kind.
    """
    checkpoint = check_optimizer_state(checkpoint_path)
    recorded = checkpoint_meta(checkpoint, checkpoint_path)["optimizer_param_names"]
    saved_all = checkpoint["optimizer_states"][0]
    names = {id(param): name for name, param in module.named_parameters()}
    carried = []
    first_index = dict(zip(recorded, accumulate((len(part) for part in recorded.values()), initial=0)))
    for key, inner in inner_optimizers(optimizer).items():
        if key not in recorded:
            raise ConfigError(f"{checkpoint_path}'s optimizer has no {key or 'single'} part; use handoff weights_only")
        # one numbering across the inner optimizers (MuonWithAdamW's state dict), or an older part per inner one
        saved, first = (saved_all[key], 0) if key in saved_all else (saved_all, first_index[key])
        states = saved["state"]
        by_name = {name: states[first + i] for i, name in enumerate(recorded[key]) if first + i in states}
        for group in inner.param_groups:
            for param in group["params"]:
                state = by_name.get(names[id(param)])
                if state is not None and _shapes_match(state, param):
                    inner.state[param] = {k: _place(v, param, k, inner) for k, v in state.items()}
                    carried.append(names[id(param)])
    fresh = [name for name, p in module.named_parameters() if p.requires_grad and name not in set(carried)]
    return carried, fresh


def check_optimizer_state(checkpoint_path: str) -> dict[str, Any]:
    """The checkpoint, when it holds optimizer state recorded by parameter name; else a clear ``ConfigError``."""
    checkpoint = load_checkpoint(checkpoint_path)
    if not checkpoint_meta(checkpoint, checkpoint_path).get("optimizer_param_names") or not checkpoint.get(
        "optimizer_states"
    ):
        raise ConfigError(
            f"{checkpoint_path} records no optimizer state by parameter name (written before they were recorded, "
            "or without an optimizer); use model.init_args.handoff weights_only"
        )
    return checkpoint


def _shapes_match(state: dict[str, Any], param: nn.Parameter) -> bool:
    moments = [v for k, v in state.items() if k != "step" and isinstance(v, torch.Tensor)]
    return all(tuple(v.shape) == tuple(param.shape) for v in moments)


def _place(value: Any, param: nn.Parameter, key: str, optimizer: torch.optim.Optimizer) -> Any:
    """A saved state entry, copied out of the (memory-mapped) checkpoint onto ``param``'s device and sharded like
    it under FSDP2; ``step`` as torch keeps it."""
    if not isinstance(value, torch.Tensor):
        return value
    if key == "step":
        on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
        return value.to(device=param.device if on_device else "cpu", dtype=torch.float32, copy=True)
    value = value.to(dtype=param.dtype, copy=True)
    if hasattr(param, "device_mesh"):  # a DTensor shard: distribute the full tensor the same way
        return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    return value.to(param.device)
