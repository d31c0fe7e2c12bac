"""The same number of batches on every rank for the litdata-streamed splits.

Under FSDP2 (or DDP) every forward pass and every metric sync is a collective: a rank that runs out of batches
before the others leaves them waiting in one forever. litdata splits a ``StreamingDataset`` across ranks itself.
With ``drop_last`` its in-order and chunk-shuffling splits give every rank the same number of full batches; without
it the last rank also takes the remainder (57 validation blocks in batches of 4 on 2 ranks: 7 and 8 batches). So
a split read by several ranks keeps full batches only (training always does): :func:`even_loader` logs, on rank 0,
how many items that leaves out, and checks the per-rank batch counts once more. litdata's whole-chunk split on
parallel filesystems (NFS, Lustre, ...) can still leave a rank with fewer batches when a split has fewer chunks
than ranks x workers; that is refused rather than left to hang.
"""

from __future__ import annotations

import math
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_info
from litdata import StreamingDataLoader, StreamingDataset

from mm_lightning.errors import ConfigError

Loader = TypeVar("Loader", bound=StreamingDataLoader)


def split_across_ranks(dataset: StreamingDataset | None) -> bool:
    """Whether litdata splits ``dataset`` across several ranks (it reads the process group when the dataset opens)."""
    return dataset is not None and dataset.distributed_env.world_size > 1


def rank_batches(loader: StreamingDataLoader) -> list[int]:
    """The batches each rank's copy of ``loader`` yields in its coming epoch, as litdata splits the data.

    Each worker batches its own share of the rank's items, so a rank yields the sum over its workers of their
    batches. A function of the split, the world size, the workers and the batch size only: no collective.
    """
    dataset, batch_size = loader.dataset, loader.batch_size
    len(loader)  # builds litdata's shuffler, which assigns chunk intervals to ranks and workers
    env, workers = dataset.distributed_env, dataset.num_workers
    _, intervals = dataset.shuffler.get_chunks_and_intervals_per_workers(
        env, workers, batch_size, dataset.current_epoch
    )
    per_worker = [math.ceil(sum(end - start for _, start, end, _ in share) / batch_size) for share in intervals]
    return [sum(per_worker[rank * workers : (rank + 1) * workers]) for rank in range(env.world_size)]


def split_items(dataset: StreamingDataset) -> int:
    """The items of the whole split, all ranks together (blocks of tokens for a ``TokensLoader``)."""
    len(dataset)  # builds the shuffler and its chunk cache
    return sum(end - start for _, start, end, _ in dataset.shuffler.cache.get_chunk_intervals())


def even_loader(loader: Loader, split: str) -> Loader:
    """``loader``, once every rank is known to get as many batches of it; logs (rank 0) what full batches leave out.

    Raises:
        ConfigError: litdata gives the ranks different numbers of batches.
    """
    dataset = loader.dataset
    if not split_across_ranks(dataset):
        return loader
    counts, where = rank_batches(loader), dataset.input_dir.url or dataset.input_dir.path
    if len(set(counts)) > 1:
        raise ConfigError(
            f"litdata splits the {split} split of {where} into {counts} batches on the {len(counts)} ranks; the ranks "
            f"with more would wait forever for the others in a collective. litdata assigns whole chunks to workers on "
            f"a parallel filesystem, so this happens when the split has fewer chunks than ranks x workers: prepare it "
            f"with smaller chunks, lower num_workers, or set LITDATA_POSIX_FAST=0"
        )
    batch_size = loader.batch_size
    kept, total = len(counts) * counts[0] * batch_size, split_items(dataset)
    if dataset.drop_last and kept < total:
        rank_zero_info(
            f"{split} split of {where}: {len(counts)} ranks x {counts[0]} batches of {batch_size} read {kept} of its "
            f"{total} items each pass ({total - kept} left out: full batches only, as many on every rank)"
        )
    return loader
