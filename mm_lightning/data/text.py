"""Text pre-training data: packed next-token batches streamed from litdata token shards.

The shards (``tokenizer.json`` + ``train/`` + ``val/``, written by ``data_prep/prepare_text.py``) hold
documents back to back, each ending with ``<|endoftext|>``. ``litdata.TokensLoader`` cuts that stream into
blocks of ``seq_len + 1`` tokens (a block never spans two chunks), so a row packs several documents, or a
piece of one; nothing is padded. Each batch carries the packing bookkeeping of
:mod:`mm_lightning.ops.packing` so attention stays within a document and positions restart at each
document (the packing of the Kimi-VL text stage).

Shuffling, resumption and the split of blocks across ranks and workers are litdata's: a deterministic
function of the seed, so a resumed run sees the data it would have seen. Lightning's fit loop saves and
restores the train ``StreamingDataLoader`` state by itself (it is a stateful loader), so the datamodule adds
nothing to checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from litdata import StreamingDataset, TokensLoader
from torch import Tensor

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data.restated_rows import DEFAULT_SPAN, check_restating, restate_opening
from mm_lightning.data.streaming import ShardDataModule
from mm_lightning.ops.packing import position_ids_from_seq_ids, seq_ids_from_eod


def collate_token_blocks(rows: list[Tensor], eod_id: int) -> dict[str, Tensor]:
    """Stack ``B`` blocks of ``T + 1`` tokens into a next-token batch with packing bookkeeping.

    Args:
        rows: ``B`` 1-D token tensors of length ``T + 1`` (any integer dtype).
        eod_id: the end-of-document token id.

    Returns:
        ``input_ids``, ``labels``, ``seq_ids``, ``position_ids``, each ``[B, T]`` int64.
    """
    block = torch.stack(rows).long()  # [B, T + 1]
    input_ids = block[:, :-1].contiguous()  # [B, T]
    labels = block[:, 1:].contiguous()  # [B, T]
    seq_ids = seq_ids_from_eod(input_ids, eod_id)  # [B, T]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "seq_ids": seq_ids,
        "position_ids": position_ids_from_seq_ids(seq_ids),
    }


def _collate_restated(rows: list[Tensor], eod_id: int, share: float, span: tuple[int, int], seed: int) -> dict:
    return collate_token_blocks([restate_opening(row, share, span, seed) for row in rows], eod_id)


class TextDataModule(ShardDataModule):
    """Packed token batches for text pre-training, streamed with litdata.

    ``test`` and ``predict`` read the ``val/`` split as validation does (there is no test split).

    Args:
        data_path: a prepared folder or URL (``s3://``, ``gs://``, ... anything litdata streams) holding
            ``tokenizer.json``, ``train/`` and ``val/``; or a demo name such as ``"demo:sotu"``, built into
            ``$MM_LIGHTNING_CACHE/demo`` on first use.
        seq_len: tokens per row ``T``; blocks of ``T + 1`` tokens give inputs and shifted labels.
        batch_size: rows per batch (per device).
        num_workers: dataloader worker processes.
        seed: the shuffling seed of the train split.
        cache_dir: where litdata caches chunks of a remote ``data_path`` (litdata's default when ``None``).
        val_batches: validate on the first this many batches of ``val`` only (all of it when ``None``).
        tokenizer_path: a local ``tokenizer.json`` to use instead of ``data_path/tokenizer.json`` (for a remote
            ``data_path`` whose filesystem fsspec cannot open here).
        repeat_share: share of training rows that say their opening span again
            (:mod:`~mm_lightning.data.restated_rows`: text that rewards copying from the context); validation rows
            never do.
        repeat_span: fewest and most tokens a restated row repeats (at most half a row).
    """

    kind = "text"

    def __init__(
        self,
        data_path: str = "demo:sotu",
        seq_len: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        cache_dir: str | None = None,
        val_batches: int | None = None,
        tokenizer_path: str | None = None,
        repeat_share: float = 0.0,
        repeat_span: tuple[int, int] = DEFAULT_SPAN,
    ):
        super().__init__(data_path, batch_size, num_workers, seed, val_batches, tokenizer_path, cache_dir)
        self.save_hyperparameters()
        self.seq_len = seq_len
        self.repeat_share, self.repeat_span = repeat_share, (int(repeat_span[0]), int(repeat_span[1]))
        check_restating(self.repeat_share, self.repeat_span, seq_len)

    @property
    def eod_id(self) -> int:
        """The end-of-document token id."""
        return tokenizer_lib.eod_id(self.tokenizer)

    def open_split(self, url: str, train: bool, **kwargs: Any) -> StreamingDataset:
        return StreamingDataset(url, item_loader=TokensLoader(block_size=self.seq_len + 1), **kwargs)

    def collate_fn(self) -> Callable[[list[Tensor]], dict[str, Tensor]]:
        return partial(collate_token_blocks, eod_id=self.eod_id)

    def train_collate_fn(self) -> Callable[[list[Tensor]], dict[str, Tensor]]:
        if not self.repeat_share:
            return self.collate_fn()
        return partial(_collate_restated, eod_id=self.eod_id, share=self.repeat_share, span=self.repeat_span,
                       seed=self.seed)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Open the streams, refusing sizes that would give no batches."""
        super().setup(stage)
        root, block = self.root, self.seq_len + 1
        self.check_split_sizes(
            lambda split, dataset, needed: (
                f"The {split} split of {root} gives {len(dataset)} blocks of seq_len + 1 = {block} tokens "
                f"({self.location.describe_split(split)}; a block never spans two chunks), fewer than the {needed} "
                f"needed. Lower seq_len, or prepare more data (--val-fraction for val)."
            )
        )
