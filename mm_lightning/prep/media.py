"""The shared machinery of the media preparations: scan, decode, report, split and write litdata shards.

:mod:`~mm_lightning.prep.video` and :mod:`~mm_lightning.prep.docs` each describe their inputs as a
:class:`MediaKind`: how to find the source files, how to list a file's items (a clip named in a captions file, a
PDF), and how to decode one item into a shard record. This module does the rest, with the rules of the text
preparation (:mod:`~mm_lightning.prep.text`); the image-text preparation (:mod:`~mm_lightning.prep.image_text`)
uses its reporting, output checks and process pool:

- a bad item (undecodable or truncated file, missing file or caption, malformed row) is reported as
  ``file:where: reason (detail)`` (the first ``MAX_REPORTED``), counted per reason and skipped; ``strict`` stops at
  the first one;
- the split of an item is a stable hash of (its file's path relative to the input, its record number), and each
  split gets at least one item; inputs with fewer than two usable items are refused with a one-line message;
- prepared data already in the output folder is replaced only with ``overwrite``, and only once the new data is
  complete.

Decoding is the expensive part, so each item is decoded once, in a process pool, and the main process writes
the records straight into ``OUT/{train,val}/`` with litdata's ``BinaryWriter`` (no second pass).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from litdata.streaming.writer import BinaryWriter
from tqdm import tqdm

from mm_lightning.errors import MMLightningError
from mm_lightning.prep.text import (
    MAX_REPORTED,
    SPLITS,
    START_METHOD,
    output_folder,
    read_split_stats,
    split_of,
    unit_hash,
    write_prep_summary,
)
from mm_lightning.prep.text_readers import SourceFile

CHUNK_BYTES = "64MB"
PREPARED_NAMES = ("prep_summary.json", *SPLITS)  # what an output folder holds once prepared


@dataclass(frozen=True)
class ItemKind:
    """What a preparation calls its items in messages and which error it raises."""

    noun: str
    """One item ("pair", "clip", "document")."""
    plural: str
    """Several items; also the count's key in ``prep_summary.json``."""
    skip_reasons: dict[str, str]
    """Reason key -> the text printed for it."""
    error: type[MMLightningError]
    """The error raised for unusable inputs and bad items under strict."""


@dataclass(frozen=True)
class MediaKind(ItemKind):
    """What differs between the video and the PDF preparation."""

    find_sources: Callable[[Sequence[str | Path]], list[SourceFile]]
    """The input files of the inputs (raising ``error`` when there are none)."""
    iter_items: Callable[[SourceFile, dict], Iterator[MediaItem]]
    """Every item of one file, good or bad, given the options."""
    load: Callable[[Any], dict | Failure]
    """Decode one item (in a pool worker; a module-level function) into a record, or a :class:`Failure`."""


@dataclass(frozen=True)
class PrepRun:
    """How a media preparation runs, whatever it prepares."""

    val_fraction: float = 0.02
    """The expected share of items in ``val``; at least one item goes to each split."""
    strict: bool = False
    """Stop at the first bad item instead of reporting and skipping it."""
    num_workers: int | None = None
    """Decoding processes (default: the CPU count)."""
    overwrite: bool = False
    """Replace the prepared data already in the output folder."""
    progress: bool = True
    """Show a progress bar."""
    report: Callable[[str], None] | None = None
    """Where bad-item messages go (default: stderr)."""


class MediaItem(NamedTuple):
    """One item of a source file: what to decode, or why it is skipped."""

    index: int  # record number within the file (1-based), part of the split hash
    where: str  # line or row to report ("" for a whole file)
    payload: Any  # picklable arguments of MediaKind.load
    reason: str | None
    detail: str = ""


class Failure(NamedTuple):
    """What :attr:`MediaKind.load` returns for an item that does not decode."""

    reason: str
    detail: str


class SkipReporter:
    """Prints bad items as ``file:where: reason (detail)`` (the first ``MAX_REPORTED``); strict raises at the first.

    The caller counts every bad item by reason; this only reports them.
    """

    def __init__(self, kind: ItemKind, strict: bool, write: Callable[[str], None] | None = None):
        self.kind, self.strict, self.count = kind, strict, 0
        self.write = write or (lambda msg: tqdm.write(msg, file=sys.stderr))

    def __call__(self, source: SourceFile, where: str, reason: str, detail: str = "") -> None:
        location = f"{source.path}:{where}" if where else str(source.path)
        message = f"{location}: {self.kind.skip_reasons[reason]}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise self.kind.error(f"{message} (--strict: stopping at the first bad {self.kind.noun})")
        self.count += 1
        if self.count <= MAX_REPORTED:
            self.write(f"skipped {message}")
        elif self.count == MAX_REPORTED + 1:
            self.write(f"... more bad {self.kind.plural} not shown (first {MAX_REPORTED} printed; all are counted)")


@contextmanager
def worker_map(workers: int, chunksize: int = 1) -> Iterator[Callable]:
    """An ordered ``map`` over a pool of ``workers`` processes (the built-in ``map`` for one), closed on exit."""
    if workers <= 1:
        yield map
        return
    pool = multiprocessing.get_context(START_METHOD).Pool(workers)
    try:
        yield functools.partial(pool.imap, chunksize=chunksize)
    finally:
        pool.terminate()


def count_workers(num_workers: int | None) -> int:
    """``num_workers``, or the CPU count when it is ``None``; at least 1."""
    return max(1, num_workers or os.cpu_count() or 1)


def existing_outputs(kind: ItemKind, out: Path, overwrite: bool, names: Sequence[str] = PREPARED_NAMES) -> list[Path]:
    """The prepared data already in ``out`` (to replace once the new data is complete); refused unless ``overwrite``."""
    existing = [out / name for name in names if (out / name).exists()]
    if existing and not overwrite:
        found = ", ".join(p.name for p in existing)
        raise kind.error(f"{out} already holds prepared data ({found}); pass --overwrite or choose another folder")
    return existing


def remove_outputs(paths: Sequence[Path]) -> None:
    """Delete the files and folders of a previous preparation."""
    for path in paths:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def total_skipped(skipped: dict[str, Counter]) -> dict[str, int]:
    """The per-split skip counts summed, by reason."""
    return dict(sorted(sum(skipped.values(), Counter()).items()))


def check_usable(kind: ItemKind, total: int, skipped: dict[str, Counter], files: int, inputs: Sequence) -> None:
    """Refuse inputs with fewer than two usable items (train and val need one each), saying what was skipped."""
    if total >= 2:
        return
    detail = ", ".join(f"{n} {kind.skip_reasons[r]}" for r, n in total_skipped(skipped).items()) or "no records"
    names = ", ".join(str(p) for p in inputs)
    need = (
        f"no usable {kind.plural}"
        if total == 0
        else f"only one usable {kind.noun} (at least 2 are needed: train and val)"
    )
    raise kind.error(f"{names}: {need} ({files} file(s) scanned: {detail})")


class _SplitWriters:
    """One litdata ``BinaryWriter`` per split; holds back the extreme items so each split gets at least one."""

    def __init__(self, root: Path):
        self.writers = {}
        for split in SPLITS:
            (root / split).mkdir(parents=True)
            self.writers[split] = BinaryWriter(str(root / split), chunk_bytes=CHUNK_BYTES)
        self.counts = Counter()
        self.held: dict[str, tuple[float, dict]] = {}  # split -> (hash, record): train's lowest, val's highest

    def add(self, split: str, point: float, record: dict) -> None:
        held = self.held.get(split)
        better = held is None or (point < held[0] if split == "train" else point > held[0])
        if better:
            self.held[split] = (point, record)
            record = held[1] if held else None
        if record is not None:
            self._write(split, record)

    def _write(self, split: str, record: dict) -> None:
        self.writers[split].add_item(self.counts[split], record)
        self.counts[split] += 1

    def total(self) -> int:
        return sum(self.counts.values()) + len(self.held)

    def finish(self) -> None:
        """Write the held items (moving one into an otherwise empty split) and the indexes."""
        if "val" not in self.held and self.counts["train"] >= 1:
            self._write("val", self.held.pop("train")[1])
        elif "train" not in self.held and self.counts["val"] >= 1:
            self._write("train", self.held.pop("val")[1])
        for split, (_, record) in self.held.items():
            self._write(split, record)
        for writer in self.writers.values():
            writer.done()
            writer.merge(1)


def _decoded(kind: MediaKind, sources: list[SourceFile], options: dict, imap: Callable, bar: tqdm):
    """``(file_idx, item, record or Failure or None)`` for every item, decoding the good ones with ``imap``."""
    for file_idx, source in enumerate(sources):
        items = list(_safe_items(kind, source, options))
        good = [item.payload for item in items if item.reason is None]
        loaded = iter(imap(kind.load, good))
        for item in items:
            bar.update(1)
            yield file_idx, item, (next(loaded) if item.reason is None else None)


def _safe_items(kind: MediaKind, source: SourceFile, options: dict) -> Iterator[MediaItem]:
    last = 0
    try:
        for item in kind.iter_items(source, options):
            last = item.index
            yield item
    except Exception as err:  # noqa: BLE001 - csv, json and OS errors: report the file, keep going
        yield MediaItem(last + 1, f"after record {last}", None, "unreadable_file", f"{type(err).__name__}: {err}")


def prepare_media_shards(
    kind: MediaKind, inputs: Sequence[str | Path], output_dir: str | Path, options: dict, run: PrepRun
) -> dict:
    """Decode every item of ``inputs`` and write ``output_dir/{train/,val/,prep_summary.json}``.

    Returns:
        The summary also written to ``prep_summary.json`` (``options`` included).

    Raises:
        ``kind.error``: no usable items (or only one), a bad item under ``strict``, or an occupied or remote output.
    """
    out = output_folder(output_dir, kind.error)
    if not 0.0 <= run.val_fraction < 1.0:
        raise kind.error(f"val_fraction must be in [0, 1), got {run.val_fraction}")
    start = time.perf_counter()
    existing = existing_outputs(kind, out, run.overwrite)
    sources = kind.find_sources(inputs)
    skipped = {split: Counter() for split in SPLITS}
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    try:
        writers = _SplitWriters(building)
        _decode_into(writers, kind, sources, options, run, skipped)
        check_usable(kind, writers.total(), skipped, len(sources), inputs)
        writers.finish()
        remove_outputs(existing)
        for split in SPLITS:
            os.replace(building / split, out / split)
    except BaseException:
        if created:  # leave no empty output folder behind a failed preparation
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    summary = _summarize(kind, out, inputs, sources, options, run.val_fraction, skipped, time.perf_counter() - start)
    write_prep_summary(out, summary)
    return summary


def _decode_into(writers: _SplitWriters, kind: MediaKind, sources: list, options: dict, run: PrepRun, skipped: dict):
    """Decode every good item into ``writers``; count and report the bad ones in ``skipped``."""
    reporter = SkipReporter(kind, run.strict, run.report)
    with worker_map(count_workers(run.num_workers)) as imap:
        with tqdm(unit=f" {kind.plural}", desc="decode", disable=not run.progress) as bar:
            for file_idx, item, result in _decoded(kind, sources, options, imap, bar):
                key = sources[file_idx].key
                split = split_of(key, item.index, run.val_fraction)
                failure = Failure(item.reason, item.detail) if item.reason else result
                if isinstance(failure, Failure):
                    skipped[split][failure.reason] += 1
                    reporter(sources[file_idx], item.where, failure.reason, failure.detail)
                    continue
                writers.add(split, unit_hash(key, item.index), result)


def _summarize(kind, out: Path, inputs, sources, options, val_fraction, skipped, seconds: float) -> dict:
    splits = {}
    for split in SPLITS:
        splits[split] = {kind.plural: read_split_stats(out / split)["documents"],
                         "skipped": dict(sorted(skipped[split].items()))}  # fmt: skip
    return {
        "inputs": [str(p) for p in inputs],
        "files": len(sources),
        **options,
        "val_fraction": val_fraction,
        kind.plural: sum(s[kind.plural] for s in splits.values()),
        "skipped": total_skipped(skipped),
        "splits": splits,
        "seconds": round(seconds, 2),
    }
