"""What the streamed datamodules share: prepared litdata splits (local or remote) or a demo, the project
tokenizer, and the loaders.

A prepared dataset is a folder or URL with ``train/`` and ``val/`` litdata splits (and, for text, the
``tokenizer.json`` it was written with); a demo name (``demo:...``) is built into the cache on first use.
Training streams shuffle whole chunks ("full": litdata's default shuffles windows of 256 consecutive
items, which feeds tens of steps from one stretch of a corpus and biases the run); validation streams in
order, optionally only its first ``val_batches`` batches, the same ones every time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
from litdata import StreamingDataLoader, StreamingDataset
from tokenizers import Tokenizer

from mm_lightning.data.location import DataLocation
from mm_lightning.errors import ConfigError


class FirstBatches:
    """The first ``limit`` batches of a loader, every epoch (a fixed validation subset)."""

    def __init__(self, loader: StreamingDataLoader, limit: int):
        self.loader, self.limit = loader, limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))


class ShardDataModule(L.LightningDataModule):
    """Base of the datamodules that stream ``train/`` and ``val/`` litdata splits.

    The path resolves through a :class:`~mm_lightning.data.location.DataLocation` of the subclass's ``kind``;
    subclasses say how splits are read (:meth:`open_split`) and batched (:meth:`collate_fn`).
    """

    kind: str = "text"
    """The layout of the prepared data (``DataLocation.kind``)."""

    def __init__(self, data_path: str, batch_size: int, num_workers: int, seed: int, val_batches: int | None,
                 tokenizer_path: str | None, cache_dir: str | None) -> None:  # fmt: skip
        super().__init__()
        self.data_path, self.batch_size, self.num_workers = str(data_path), batch_size, num_workers
        self.seed, self.val_batches = seed, val_batches
        self.location = DataLocation(self.data_path, self.kind, tokenizer_path, cache_dir)
        self._tokenizer: Tokenizer | None = None
        self.train_dataset: StreamingDataset | None = None
        self.val_dataset: StreamingDataset | None = None

    def open_split(self, url: str, train: bool, **kwargs: Any) -> StreamingDataset:
        """The ``StreamingDataset`` of one split; ``kwargs`` carry shuffling and caching."""
        return StreamingDataset(url, **kwargs)

    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """Turns a list of items into a batch."""
        raise NotImplementedError

    @property
    def root(self) -> str:
        """The prepared folder or URL (a demo name resolved to its cache folder, built if needed)."""
        return self.location.root

    @property
    def tokenizer(self) -> Tokenizer:
        """The project tokenizer these shards are tokenized with."""
        if self._tokenizer is None:
            self._tokenizer = self.location.tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (special tokens included)."""
        return self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        """Build a demo and its tokenizer on first use (once per node); prepared folders need nothing."""
        self.location.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Open the train (shuffled) and val (in order) streams."""
        self.location.check()
        options = self.location.stream_options()
        self.train_dataset = self.open_split(
            self.location.split("train"), train=True, shuffle=True, drop_last=True, seed=self.seed,
            item_shuffle_window="full", **options,
        )  # fmt: skip
        self.val_dataset = self.open_split(self.location.split("val"), train=False, shuffle=False, **options)

    def check_split_sizes(self, describe: Callable[[str, StreamingDataset, int], str]) -> None:
        """Refuse a val split with no item or a train split smaller than one batch (``describe`` says why)."""
        for split, dataset, needed in (("val", self.val_dataset, 1), ("train", self.train_dataset, self.batch_size)):
            if len(dataset) < needed:
                raise ConfigError(describe(split, dataset, needed))

    def train_dataloader(self) -> StreamingDataLoader:
        """Shuffled, full batches only."""
        return self._loader(self.train_dataset, drop_last=True)

    def val_dataloader(self) -> StreamingDataLoader | FirstBatches:
        """In order; the first ``val_batches`` batches when that is set."""
        loader = self._loader(self.val_dataset, drop_last=False)
        return loader if self.val_batches is None else FirstBatches(loader, self.val_batches)

    def _loader(self, dataset: StreamingDataset | None, drop_last: bool) -> StreamingDataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return StreamingDataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=drop_last,
            collate_fn=self.collate_fn(),
        )  # fmt: skip
