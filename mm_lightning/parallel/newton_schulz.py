"""Newton-Schulz orthogonalisation of whole matrices whose rows FSDP2 spreads over the ranks (Muon's update).

Muon orthogonalises each hidden weight's momentum as one matrix, and under FSDP2 each rank holds only some rows of
it (a ``DTensor`` sharded on dim 0). Every matrix gets one owner rank, round robin: in each bucket of N matrices
(N ranks) rank ``j`` owns the ``j``-th. One all-to-all sends every rank's rows of a matrix to its owner, each owner
orthogonalises its whole matrix (at the same time as the others do theirs), and a second all-to-all returns each
rank its rows of every result. Each rank so receives about one matrix per bucket each way and runs 1/N of the
Newton-Schulz work; gathering every matrix on every rank (Moonlight's Distributed Muon) would receive N and repeat
all of the work N times. The rows travel in bf16, the precision Newton-Schulz runs in, so the owner orthogonalises
the very matrix one process would. Matrices laid out otherwise (a 2-D mesh, other placements) are gathered whole on
every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

Orthogonalise = Callable[[Tensor], Tensor]
"""Newton-Schulz of one whole (bf16) matrix."""


def orthogonalise_all(updates: list[Tensor], orthogonalise: Orthogonalise) -> list[Tensor]:
    """``orthogonalise`` each whole matrix of ``updates``, each result laid out (sharded or not) as its input.

    Every rank must call this with the same matrices in the same order (the collectives pair them up).
    """
    results: list[Tensor | None] = [None] * len(updates)
    by_mesh: dict[int, list[int]] = {}
    for index, update in enumerate(updates):
        if not isinstance(update, DTensor):
            results[index] = orthogonalise(update)
        elif update.device_mesh.ndim == 1 and tuple(update.placements) == (Shard(0),):
            by_mesh.setdefault(id(update.device_mesh), []).append(index)
        else:
            whole = orthogonalise(update.to(torch.bfloat16).full_tensor())  # every rank, all of it
            results[index] = distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
    for indices in by_mesh.values():
        world = updates[indices[0]].device_mesh.size()
        for start in range(0, len(indices), world):
            bucket = indices[start : start + world]
            for index, result in zip(bucket, orthogonalise_bucket([updates[i] for i in bucket], orthogonalise)):
                results[index] = result
    return results


def orthogonalise_bucket(bucket: list[DTensor], orthogonalise: Orthogonalise) -> list[DTensor]:
    """At most N row-sharded matrices on an N-rank mesh: rank ``j`` orthogonalises ``bucket[j]`` whole."""
    mesh = bucket[0].device_mesh
    group, world, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    shards = [update.to_local().to(torch.bfloat16) for update in bucket]  # this rank's rows of each
    to_owners = [shard.numel() for shard in shards] + [0] * (world - len(bucket))
    owned = bucket[rank] if rank < len(bucket) else None
    from_ranks = [rows * owned.shape[1] for rows in chunk_rows(owned.shape[0], world)] if owned is not None else []
    from_ranks += [0] * (world - len(from_ranks))
    whole = shards[0].new_empty(sum(from_ranks))  # the owned matrix, its ranks' rows in rank order
    dist.all_to_all_single(whole, torch.cat([shard.flatten() for shard in shards]), from_ranks, to_owners, group=group)
    orthogonal = orthogonalise(whole.view(owned.shape)).flatten() if owned is not None else whole
    returned = whole.new_empty(sum(to_owners))
    dist.all_to_all_single(returned, orthogonal, to_owners, from_ranks, group=group)
    return [
        DTensor.from_local(
            rows.view(shard.shape), mesh, update.placements, run_check=False, shape=update.shape, stride=update.stride()
        )  # fmt: skip
        for rows, shard, update in zip(returned.split(to_owners[: len(bucket)]), shards, bucket, strict=True)
    ]


def chunk_rows(rows: int, world: int) -> list[int]:
    """How ``Shard(0)`` spreads ``rows`` over ``world`` ranks (``torch.chunk``: ceil-sized chunks, then the rest)."""
    chunk = math.ceil(rows / world)
    return [max(0, min(chunk, rows - rank * chunk)) for rank in range(world)]
