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

import itertools
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import lightning as L
import torch
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader
from tokenizers import Tokenizer
from torch import Tensor

from mm_lightning.data import tokenizer as tokenizer_lib
from mm_lightning.data.demo import ensure_demo_text, is_demo_name
from mm_lightning.errors import ConfigError, DataError
from mm_lightning.ops.packing import position_ids_from_seq_ids, seq_ids_from_eod


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``gs://``, ...) that litdata streams from, not a local folder."""
    return "://" in path


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


class _FirstBatches:
    """The first ``limit`` batches of a loader, every epoch (a fixed validation subset)."""

    def __init__(self, loader: StreamingDataLoader, limit: int):
        self.loader, self.limit = loader, limit

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))


class TextDataModule(L.LightningDataModule):
    """Packed token batches for text pre-training, streamed with litdata.

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
    """

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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_path, self.seq_len, self.batch_size = str(data_path), seq_len, batch_size
        self.num_workers, self.seed, self.cache_dir = num_workers, seed, cache_dir
        self.val_batches, self.tokenizer_path = val_batches, tokenizer_path
        self._tokenizer: Tokenizer | None = None
        self.train_dataset: StreamingDataset | None = None
        self.val_dataset: StreamingDataset | None = None

    @property
    def root(self) -> str:
        """The prepared folder or URL (a demo name resolved to its cache folder, built if needed)."""
        if is_demo_name(self.data_path):
            return str(ensure_demo_text(self.data_path))
        return self.data_path.rstrip("/")

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were written with."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    @property
    def eod_id(self) -> int:
        """The end-of-document token id."""
        return tokenizer_lib.eod_id(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (special tokens included)."""
        return self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        """Build the demo shards on first use (once per node); prepared folders need nothing."""
        if is_demo_name(self.data_path):
            ensure_demo_text(self.data_path)

    def setup(self, stage: str | None = None) -> None:
        """Open the train and val streams, refusing layouts or sizes that would give no batches."""
        root = self.root
        if not is_remote(root):
            check_prepared_dir(Path(root))
        loader = partial(TokensLoader, block_size=self.seq_len + 1)
        cache = {"cache_dir": self.cache_dir} if is_remote(root) and self.cache_dir else {}
        # "full": permute all blocks of a chunk, not litdata's default windows of 256 consecutive blocks, which
        # feed tens of steps from one stretch of the corpus (in the demo, one era of speeches) and bias the run
        self.train_dataset = StreamingDataset(
            f"{root}/train", item_loader=loader(), shuffle=True, drop_last=True, seed=self.seed,
            item_shuffle_window="full", **cache,
        )  # fmt: skip
        self.val_dataset = StreamingDataset(f"{root}/val", item_loader=loader(), shuffle=False, **cache)
        self._check_blocks(root)

    def _check_blocks(self, root: str) -> None:
        block = self.seq_len + 1
        for split, dataset, needed in (("val", self.val_dataset, 1), ("train", self.train_dataset, self.batch_size)):
            if len(dataset) < needed:
                raise ConfigError(
                    f"The {split} split of {root} gives {len(dataset)} blocks of seq_len + 1 = {block} tokens "
                    f"({describe_split(root, split)}; a block never spans two chunks), fewer than the {needed} "
                    f"needed. Lower seq_len, or prepare more data (--val-fraction for val)."
                )

    def train_dataloader(self) -> StreamingDataLoader:
        """Shuffled, full batches only."""
        return self._loader(self.train_dataset, drop_last=True)

    def val_dataloader(self) -> StreamingDataLoader | _FirstBatches:
        """In order; the first ``val_batches`` batches when that is set."""
        loader = self._loader(self.val_dataset, drop_last=False)
        return loader if self.val_batches is None else _FirstBatches(loader, self.val_batches)

    def _loader(self, dataset: StreamingDataset | None, drop_last: bool) -> StreamingDataLoader:
        if dataset is None:
            raise RuntimeError("TextDataModule.setup() must run before asking for a dataloader")
        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            drop_last=drop_last,
            collate_fn=partial(collate_token_blocks, eod_id=self.eod_id),
        )

    def _load_tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is not None:
            return tokenizer_lib.load_tokenizer(self.tokenizer_path)
        root = self.root
        if not is_remote(root):
            check_prepared_dir(Path(root))
            return tokenizer_lib.load_tokenizer(Path(root) / "tokenizer.json")
        return _read_remote_tokenizer(f"{root}/tokenizer.json")


def check_prepared_dir(root: Path) -> None:
    """Refuse a local folder that lacks a piece of the prepared layout, naming what is missing."""
    pieces = {"tokenizer.json": root / "tokenizer.json", "train/": root / "train", "val/": root / "val"}
    missing = [name for name, path in pieces.items() if not path.exists()]
    missing += [
        f"{s}/index.json" for s in ("train", "val") if (root / s).is_dir() and not (root / s / "index.json").exists()
    ]
    if not root.is_dir():
        missing = ["the folder itself"]
    if missing:
        raise DataError(
            f"{root} is not a prepared text dataset: missing {', '.join(missing)}. "
            f"Create one with: python data_prep/prepare_text.py YOUR_CORPUS --output {root}"
        )


def describe_split(root: str, split: str) -> str:
    """``N tokens in M chunks`` for a local split, from its ``index.json``; a placeholder for remote ones."""
    index = Path(root) / split / "index.json"
    if is_remote(root) or not index.is_file():
        return "token count unknown"
    chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
    return f"{sum(c['dim'] or 0 for c in chunks)} tokens in {len(chunks)} chunk(s)"


def _read_remote_tokenizer(url: str) -> Tokenizer:
    import fsspec

    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            text = f.read()
    except (ImportError, ValueError, OSError) as err:
        raise RuntimeError(
            f"Could not read {url} ({err}). Install the fsspec backend for this URL (s3fs, gcsfs, adlfs), "
            "or download tokenizer.json and pass tokenizer_path=..."
        ) from err
    return tokenizer_lib.tokenizer_from_str(text, source=url)
