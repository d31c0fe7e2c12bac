"""``apply_*`` functions that wrap a model's blocks: activation checkpointing, compile, FSDP2 sharding.

Order matters and follows torchtitan: checkpoint each block, then compile each block, then
``fully_shard`` each block, then the root (which then holds the embeddings, final norm and head).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard


def apply_activation_checkpointing(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    for index, block in enumerate(blocks):
        blocks[index] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(blocks: nn.ModuleList) -> None:
    """``torch.compile`` each block in place (per-block compile keeps graphs small and reusable)."""
    for block in blocks:
        block.compile()


def apply_fsdp(root: nn.Module, blocks: nn.ModuleList, mesh: DeviceMesh) -> None:
    """FSDP2: shard each block's parameters over ``mesh``, then the rest of ``root``."""
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(root, mesh=mesh)


def parallelize(
    root: nn.Module,
    blocks: nn.ModuleList,
    mesh: DeviceMesh | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> None:
    """Apply, in order, activation checkpointing, compile and (when ``mesh`` is given) FSDP2 sharding."""
    if activation_checkpointing:
        apply_activation_checkpointing(blocks)
    if compile:
        apply_compile(blocks)
    if mesh is not None:
        apply_fsdp(root, blocks, mesh)
