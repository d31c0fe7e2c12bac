"""Stage hand-off of optimizer state: an earlier stage's Adam/Muon moments for the parameters that match.

Three hand-off modes exist between stages (set in YAML):

* full resume (same stage): Lightning's ``ckpt_path``: weights, optimizer, scheduler, data position;
* ``continue`` (a new stage that continues, as OLMo 2 did between stages): weights, the optimizer moments of
  every parameter whose name and shape match (new parameters start fresh), and the global step and LR
  schedule (``LRSchedulerResume``);
* ``weights_only``: weights; fresh optimizer; the stage's own schedule.

A checkpoint's optimizer state is indexed by position, and the numbering depends on how it was saved: in the optimizer's
order on one device and under DDP, in the module's under FSDP2 (:func:`optimizer_state_names`). Every stage records
the names in the order its saved state is numbered (``optimizer_state_names``) and each inner optimizer's names
(``optimizer_param_names``, which say which moments are Muon's and which AdamW's); the moments are then matched by
name (:func:`saved_states_by_name`, which also reads checkpoints written before the first was recorded).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
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
    """Per inner optimizer, its parameters' names in its order (how its own ``state_dict()`` numbers them)."""
    names = {id(param): name for name, param in module.named_parameters()}
    return {
        key: [names[id(p)] for group in inner.param_groups for p in group["params"]]
        for key, inner in inner_optimizers(optimizer).items()
    }


def optimizer_state_names(module: nn.Module, optimizer: torch.optim.Optimizer, strategy: Any = None) -> list[str]:
    """The name of the parameter whose state a Lightning checkpoint's optimizer state holds at each index.

    One device and DDP save ``optimizer.state_dict()``: parameters numbered in the optimizer's order, its param groups
    in turn (``MuonWithAdamW``: Muon's, then AdamW's). ``ModelParallelStrategy`` (FSDP2) gathers the state keyed by name
    and, for a full checkpoint (``save_distributed_checkpoint=False``), numbers it by each parameter's position in
    ``module.parameters()``, frozen ones included (``FSDP.rekey_optim_state_dict(..., PARAM_ID, module)``); its
    distributed checkpoints keep the names as keys (a folder, which the hand-off does not read).

    Args:
        module: the stage (the module the strategy saves).
        optimizer: its optimizer.
        strategy: the Trainer's strategy.
    """
    if isinstance(strategy, ModelParallelStrategy):
        return [name for name, _ in module.named_parameters()]
    names = {id(param): name for name, param in module.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def saved_states_by_name(checkpoint: dict[str, Any], checkpoint_path: str) -> dict[str, dict[str, Any]]:
    """Each parameter's saved optimizer state, by name.

    A checkpoint written before ``optimizer_state_names`` was recorded has the names in the optimizer's order only:
    the numbering of a one-device or DDP save (and of Muon's older per-inner-optimizer form). An FSDP2 save numbered
    them by module position instead, so its param groups do not count 0, 1, 2, ...: that order comes from its
    ``state_dict``, whose keys follow the module's parameters (:func:`_module_order`).

    Raises:
        ConfigError: an FSDP2 checkpoint whose module order cannot be recovered.
    """
    meta, saved = checkpoint_meta(checkpoint, checkpoint_path), checkpoint["optimizer_states"][0]
    recorded = meta["optimizer_param_names"]
    if all(key in saved for key in recorded):  # Muon's older form: one state dict per inner optimizer
        return {name: saved[key]["state"][i] for key, names in recorded.items()
                for i, name in enumerate(names) if i in saved[key]["state"]}  # fmt: skip
    numbered = meta.get("optimizer_state_names")
    if numbered is None:
        in_optimizer_order = [name for names in recorded.values() for name in names]
        ids = [index for group in saved["param_groups"] for index in group["params"]]
        numbered = in_optimizer_order if ids == list(range(len(ids))) else _module_order(checkpoint, checkpoint_path)
    return {numbered[index]: state for index, state in saved["state"].items()}


def _module_order(checkpoint: dict[str, Any], checkpoint_path: str) -> list[str]:
    """The trained parameters' names in module order, from an FSDP2 checkpoint's ``state_dict`` keys; checked against
    the positions its param groups hold (they differ when a frozen parameter came before a trained one)."""
    recorded = checkpoint_meta(checkpoint, checkpoint_path)["optimizer_param_names"]
    in_optimizer_order = iter([name for names in recorded.values() for name in names])
    trained = {name for names in recorded.values() for name in names}
    position = {name: index for index, name in enumerate(n for n in checkpoint["state_dict"] if n in trained)}
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        names = islice(in_optimizer_order, len(group["params"]))  # this group's, in the optimizer's order
        if sorted(group["params"]) != sorted(position.get(name, -1) for name in names):
            raise ConfigError(
                f"{checkpoint_path}'s optimizer state is numbered by module position (an FSDP2 checkpoint written "
                "before that was recorded) in an order its weights do not give; use handoff weights_only"
            )
    return list(position)


# The saved parts whose moments an inner optimizer can take: Muon's momentum is Muon's alone; AdamW's two moments are
# the same whether a lone AdamW ("") or Muon's AdamW part made them, so stages may switch between the two optimizers
# (a Muon stage 1, then an AdamW alignment, then a Muon joint stage): the moments of the other kind start fresh.
_MOMENT_KINDS = {"muon": ("muon",), "adamw": ("", "adamw"), "": ("", "adamw")}


def carry_optimizer_state(
    optimizer: torch.optim.Optimizer, module: nn.Module, checkpoint_path: str
) -> tuple[list[str], list[str]]:
    """Copy the moments of matching parameters from a checkpoint into a freshly built ``optimizer``.

    Returns:
        The names that received earlier moments, and the trainable names that start fresh.

    Raises:
        ConfigError: the checkpoint records no parameter names (written before they were recorded).
    """
    checkpoint = check_optimizer_state(checkpoint_path)
    recorded = checkpoint_meta(checkpoint, checkpoint_path)["optimizer_param_names"]
    saved = saved_states_by_name(checkpoint, checkpoint_path)
    names = {id(param): name for name, param in module.named_parameters()}
    carried = []
    for key, inner in inner_optimizers(optimizer).items():
        same_kind = {name for part in _MOMENT_KINDS[key] for name in recorded.get(part, ())}
        for group in inner.param_groups:
            for param in group["params"]:
                state = saved.get(names[id(param)]) if names[id(param)] in same_kind else None
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
