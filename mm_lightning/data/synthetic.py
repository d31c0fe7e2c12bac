"""Synthetic packed text: deterministic random documents, for benchmarks and equivalence tests.

Row ``i`` is a pure function of ``(seed, i)``, so every process, worker and resumed run sees the same
data for the same index, which is what "FSDP == single process" tests need.
"""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mm_lightning.data.text import collate_token_blocks


class SyntheticTextDataset(Dataset):
    """``num_rows`` rows of ``seq_len + 1`` random tokens with an EOD (id 0) ending each document."""

    def __init__(self, num_rows: int, seq_len: int, vocab_size: int, mean_doc_len: int, seed: int) -> None:
        self.num_rows, self.seq_len, self.vocab_size = num_rows, seq_len, vocab_size
        self.mean_doc_len, self.seed = mean_doc_len, seed

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        row = torch.randint(1, self.vocab_size, (self.seq_len + 1,), generator=generator)
        row[torch.rand(self.seq_len + 1, generator=generator) < 1.0 / self.mean_doc_len] = 0  # EOD
        return row  # [T + 1]


class SyntheticTextDataModule(pl.LightningDataModule):
    """Random packed text with the same batch layout as :class:`TextDataModule`.

    Args:
        vocab_size: token ids are drawn from ``[1, vocab_size)``; 0 is the EOD token.
        seq_len: tokens per row.
        batch_size: rows per batch (per process).
        num_rows: rows in the training set (validation has a quarter as many, other seeds).
        mean_doc_len: expected document length (EOD tokens are placed at random with rate ``1/mean_doc_len``).
        seed: base seed; row ``i`` depends only on ``(seed, i)``.
    """

    def __init__(self, vocab_size: int = 8192, seq_len: int = 256, batch_size: int = 8, num_rows: int = 256,
                 mean_doc_len: int = 128, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.train_set = SyntheticTextDataset(num_rows, seq_len, vocab_size, mean_doc_len, seed)
        self.val_set = SyntheticTextDataset(max(1, num_rows // 4), seq_len, vocab_size, mean_doc_len, seed + 1)

    def train_dataloader(self) -> DataLoader:
        return ordered_loader(self.train_set, self.batch_size, self.trainer, eod_id=0, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return ordered_loader(self.val_set, self.batch_size, self.trainer, eod_id=0, drop_last=False)


def ordered_loader(dataset: Dataset, batch_size: int, trainer: pl.Trainer | None, eod_id: int,
                   drop_last: bool) -> DataLoader:  # fmt: skip
    """Rows of ``dataset`` in order as next-token batches, split across data-parallel ranks by index.

    Rank ``r`` takes rows ``r, r + world, ...``, so that N processes with batch ``b`` see, step by step, the rows
    one process with batch ``N * b`` sees.
    """
    sampler = None
    if trainer is not None and trainer.world_size > 1:
        kwargs = trainer.strategy.distributed_sampler_kwargs
        sampler = DistributedSampler(dataset, **kwargs, shuffle=False, drop_last=drop_last)
    collate = partial(collate_token_blocks, eod_id=eod_id)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate)
