"""What the streamed datamodules share: prepared litdata splits (local or remote) or a demo, the project
tokenizer, and the loaders.

A prepared dataset is a folder or URL with ``train/`` and ``val/`` litdata splits (and, for text, the
``tokenizer.json`` it was written with); a demo name (``demo:...``) is built into the cache on first use.
Training streams shuffle whole chunks ("full": litdata's default shuffles windows of 256 consecutive
items, which feeds tens of steps from one stretch of a corpus and biases the run); validation streams in
order, optionally only its first ``val_batches`` batches, the same ones every time. The prepared data has no test
split: ``test`` and ``predict`` read the val split as validation does (hold it out of training, as ``prepare`` does).

A damaged local split (a chunk truncated, overwritten or missing) is refused at ``setup`` when a chunk's size
disagrees with ``index.json``, and a failure while reading chunks is reported as the damaged chunk when one is
found (:func:`find_damaged_chunk`), rather than as litdata's message about a download.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from litdata import StreamingDataLoader, StreamingDataset
from tokenizers import Tokenizer

from mm_lightning.data.location import DataLocation, LocatedTokenizer
from mm_lightning.data.rank_split import even_loader, split_across_ranks
from mm_lightning.errors import ConfigError, DataError

# where litdata reads chunk bytes (not where it calls a dataset's transform): a failure there is the data's
_CHUNK_READING = re.compile(r"litdata[/\\]streaming[/\\](item_loader|reader)\.py")


def find_damaged_chunk(split_dir: str | Path, read_headers: bool = True) -> str | None:
    """Why a chunk of a local litdata split cannot be read, or ``None`` when every chunk looks whole.

    A chunk is damaged when it is missing, when its size is not the one ``index.json`` records, or (with
    ``read_headers``: two small reads per chunk) when its header's item count or offsets do not fit ``index.json``
    and its size. Compressed or encrypted chunks are not checked.
    """
    split_dir = Path(split_dir)
    index = json.loads((split_dir / "index.json").read_text(encoding="utf-8"))
    config = index["config"]
    if config.get("compression") or config.get("compression_level") or config.get("encryption"):
        return None
    for chunk in index["chunks"]:
        path, size, items = split_dir / chunk["filename"], chunk["chunk_bytes"], chunk["chunk_size"]
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != size:
            return f"{path.name} has {path.stat().st_size} bytes where index.json records {size}"
        if read_headers and not _header_fits(path, items, size):
            return f"{path.name} has a header that does not match index.json"
    return None


def _header_fits(path: Path, items: int, size: int) -> bool:
    """Whether a chunk's header (item count, then ``items + 1`` offsets, all uint32) fits ``items`` and ``size``."""
    with path.open("rb") as f:
        count, first = struct.unpack("<2I", f.read(8))
        f.seek(4 * (items + 1))
        (last,) = struct.unpack("<I", f.read(4))
    return count == items and first == 4 * (items + 2) and first <= last <= size


def check_chunks(split_dir: str | Path, read_headers: bool = True) -> None:
    """Raise a ``DataError`` naming the damaged chunk of a local split (:func:`find_damaged_chunk`), if any."""
    damaged = _damaged_split(split_dir, read_headers)
    if damaged is not None:
        raise damaged


def chunk_read_error(split_dir: str | Path, error: Exception) -> DataError | None:
    """The ``DataError`` behind a failure to read a local split: a damaged chunk, or an error raised where litdata
    reads chunk bytes (also inside a loader worker); ``None`` when the failure is elsewhere (a bug keeps its
    traceback)."""
    damaged = _damaged_split(split_dir, read_headers=True)
    lines = [line.strip() for line in "".join(traceback.format_exception(error)).splitlines() if line.strip()]
    if damaged is not None or not any(_CHUNK_READING.search(line) for line in lines):
        return damaged
    return DataError(
        f"could not read the prepared data {split_dir} ({lines[-1]}): a chunk is corrupt, or was written by another "
        f"litdata version. {_prepare_again(split_dir)}"
    )


def _damaged_split(split_dir: str | Path, read_headers: bool) -> DataError | None:
    damage = find_damaged_chunk(split_dir, read_headers)
    if damage is None:
        return None
    return DataError(f"the prepared data {split_dir} is corrupt or truncated: {damage}. {_prepare_again(split_dir)}")


def _prepare_again(split_dir: str | Path) -> str:
    root = Path(split_dir).parent
    return f"Re-run the prepare step that wrote it (mm-lightning prepare ... --output {root} --overwrite)"


class ShardLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose failures to read a local split's chunks are a ``DataError`` naming the split."""

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from super().__iter__()
        except Exception as error:  # litdata's errors vary: a wait timeout, a header, struct or decoding error
            folder = self.dataset.input_dir
            user_error = chunk_read_error(folder.path, error) if folder.url is None and folder.path else None
            if user_error is None:
                raise
            raise user_error from error


class FirstBatches:
    """The first ``limit`` batches of a loader, every epoch (a fixed validation subset)."""

    def __init__(self, loader: StreamingDataLoader, limit: int):
        self.loader, self.limit = loader, limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))


class ShardDataModule(LocatedTokenizer, L.LightningDataModule):
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

    def train_collate_fn(self) -> Callable[[list[Any]], Any]:
        """Turns a list of training items into a batch (:meth:`collate_fn` unless training batches differ)."""
        return self.collate_fn()

    @property
    def root(self) -> str:
        """The prepared folder or URL (a demo name resolved to its cache folder, built if needed)."""
        return self.location.root

    def setup(self, stage: str | None = None) -> None:
        """Open the train (shuffled) and val (in order) streams; a chunk of the wrong size is refused here."""
        self.location.check()
        if not self.location.remote:
            for split in ("train", "val"):
                check_chunks(self.location.split(split), read_headers=False)
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

    def train_dataloader(self) -> ShardLoader:
        """Shuffled, full batches only, as many on every rank."""
        return even_loader(self._loader(self.train_dataset, drop_last=True, train=True), "train")

    def val_dataloader(self) -> ShardLoader | FirstBatches:
        """In order; the first ``val_batches`` batches when that is set. Split across ranks, full batches only, as
        many on every rank (:mod:`~mm_lightning.data.rank_split`: a rank with one more would hang the others)."""
        loader = self._loader(self.val_dataset, drop_last=split_across_ranks(self.val_dataset))
        loader = even_loader(loader, "val")
        return loader if self.val_batches is None else FirstBatches(loader, self.val_batches)

    def test_dataloader(self) -> ShardLoader | FirstBatches:
        """The val split as validation reads it (:meth:`val_dataloader`): there is no separate test split."""
        return self.val_dataloader()

    def predict_dataloader(self) -> ShardLoader | FirstBatches:
        """The val split as validation reads it (:meth:`val_dataloader`): in order, as many batches on every rank."""
        return self.val_dataloader()

    def _loader(self, dataset: StreamingDataset | None, drop_last: bool, train: bool = False) -> ShardLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return ShardLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=drop_last,
            collate_fn=self.train_collate_fn() if train else self.collate_fn(),
        )  # fmt: skip
