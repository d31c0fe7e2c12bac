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
from pathlib import Path
from typing import Any

import lightning as L
from litdata import StreamingDataLoader, StreamingDataset
from tokenizers import Tokenizer

from mm_lightning.data import tokenizer as tokenizer_lib
from mm_lightning.data.demo import is_demo_name
from mm_lightning.errors import ConfigError, DataError


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``gs://``, ...) that litdata streams from, not a local folder."""
    return "://" in path


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

    Subclasses say how a demo is built (:meth:`ensure_demo`, :meth:`demo_tokenizer`), how a local folder is
    checked (:meth:`check_local_dir`), how splits are read (:meth:`open_split`) and batched (:meth:`collate_fn`).
    """

    def __init__(self, data_path: str, batch_size: int, num_workers: int, seed: int, val_batches: int | None,
                 tokenizer_path: str | None, cache_dir: str | None) -> None:  # fmt: skip
        super().__init__()
        self.data_path, self.batch_size, self.num_workers = str(data_path), batch_size, num_workers
        self.seed, self.val_batches, self.tokenizer_path, self.cache_dir = seed, val_batches, tokenizer_path, cache_dir
        self._tokenizer: Tokenizer | None = None
        self.train_dataset: StreamingDataset | None = None
        self.val_dataset: StreamingDataset | None = None

    def ensure_demo(self, name: str) -> Path:
        """Build (once) and return the demo's prepared folder."""
        raise NotImplementedError

    def demo_tokenizer(self, name: str) -> Path:
        """The ``tokenizer.json`` of a demo."""
        raise NotImplementedError

    def check_local_dir(self, root: Path) -> None:
        """Raise :class:`DataError` naming what a local prepared folder lacks."""
        raise NotImplementedError

    def open_split(self, url: str, train: bool, **kwargs: Any) -> StreamingDataset:
        """The ``StreamingDataset`` of one split; ``kwargs`` carry shuffling and caching."""
        return StreamingDataset(url, **kwargs)

    def collate_fn(self) -> Callable[[list[Any]], Any]:
        """Turns a list of items into a batch."""
        raise NotImplementedError

    @property
    def root(self) -> str:
        """The prepared folder or URL (a demo name resolved to its cache folder, built if needed)."""
        if is_demo_name(self.data_path):
            return str(self.ensure_demo(self.data_path))
        return self.data_path.rstrip("/")

    @property
    def tokenizer(self) -> Tokenizer:
        """The project tokenizer these shards are tokenized with."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (special tokens included)."""
        return self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        """Build a demo and its tokenizer on first use (once per node); prepared folders need nothing."""
        if is_demo_name(self.data_path):
            self.ensure_demo(self.data_path)
            self.demo_tokenizer(self.data_path)

    def setup(self, stage: str | None = None) -> None:
        """Open the train (shuffled) and val (in order) streams."""
        root = self.root
        if not is_remote(root):
            self.check_local_dir(Path(root))
        cache = {"cache_dir": self.cache_dir} if is_remote(root) and self.cache_dir else {}
        self.train_dataset = self.open_split(
            f"{root}/train", train=True, shuffle=True, drop_last=True, seed=self.seed, item_shuffle_window="full",
            **cache,
        )  # fmt: skip
        self.val_dataset = self.open_split(f"{root}/val", train=False, shuffle=False, **cache)

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

    def _load_tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is not None:
            return tokenizer_lib.load_tokenizer(self.tokenizer_path)
        if is_demo_name(self.data_path):
            return tokenizer_lib.load_tokenizer(self.demo_tokenizer(self.data_path))
        root = self.root
        if is_remote(root):
            return read_remote_tokenizer(f"{root}/tokenizer.json")
        self.check_local_dir(Path(root))
        if not (Path(root) / "tokenizer.json").is_file():
            raise DataError(
                f"{root} has no tokenizer.json: pass tokenizer_path=<the text stage's tokenizer.json>, or prepare "
                "the data with --tokenizer"
            )
        return tokenizer_lib.load_tokenizer(Path(root) / "tokenizer.json")


def read_remote_tokenizer(url: str) -> Tokenizer:
    """A ``tokenizer.json`` read through fsspec, with a clear error when its backend is missing."""
    import fsspec

    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            text = f.read()
    except (ImportError, ValueError, OSError) as err:
        raise DataError(
            f"Could not read {url} ({err}). Install the fsspec backend for this URL (s3fs, gcsfs, adlfs), "
            "or download tokenizer.json and pass tokenizer_path=..."
        ) from err
    return tokenizer_lib.tokenizer_from_str(text, source=url)
