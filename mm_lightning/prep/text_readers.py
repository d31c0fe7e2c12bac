"""Reading raw text corpora record by record: .txt (one document per file), .jsonl and .parquet, gzip allowed.

Every record comes back with its position (for reports and for the split hash) and either its text or the
reason it must be skipped (invalid UTF-8, malformed JSON, missing or non-string text field, empty text), so
that the scan pass and the ``litdata.optimize`` workers of :mod:`mm_lightning.prep.text` apply exactly
the same checks.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import pyarrow.parquet as pq

from mm_lightning.errors import MMLightningError

SUFFIXES = {
    ".txt": "txt",
    ".txt.gz": "txt",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".parquet": "parquet",
}
SKIP_REASONS = {
    "invalid_utf8": "not valid UTF-8",
    "malformed_json": "malformed JSON",
    "missing_text": "text field missing or not a string",
    "empty": "empty or whitespace-only text",
}


class TextPrepError(MMLightningError):
    """A corpus that cannot be prepared (no documents, or a bad record under ``strict``); the message says why."""


@dataclass(frozen=True)
class SourceFile:
    """One input file: its path, the path used in reports and split hashes, and its format."""

    path: Path
    key: str
    kind: str


class Record(NamedTuple):
    """One record of a source file: a document's text, or the reason it is skipped."""

    index: int  # record number within the file (1-based line or row), part of the split hash
    line: int  # line (or row) to report
    text: str | None
    reason: str | None


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if name.endswith(suffix)), None)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_source_files(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The text files (.txt, .jsonl, .parquet, .gz too) of ``inputs``; see :func:`discover_files`.

    Raises:
        TextPrepError: when an input does not exist, or there is no supported file at all.
    """
    return discover_files(inputs, _kind_of, TextPrepError, "No .txt, .jsonl or .parquet files (optionally .gz)")


def discover_files(
    inputs: Sequence[str | Path], kind_of: Callable[[Path], str | None], error: type[Exception], none_found: str
) -> list[SourceFile]:
    """The files of ``inputs`` (files, or folders searched recursively) that ``kind_of`` recognises.

    Sorted within each input; hidden files and folders (``.name``) inside a folder are left out; a file reached
    twice is read once. Raises ``error`` when an input does not exist, or ``none_found`` when nothing matched.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise error(f"Input path(s) not found: {', '.join(missing)}")
    sources, seen = [], set()
    for raw in inputs:
        root = Path(raw)
        if root.is_file():
            candidates, base = [root], root.parent
        else:
            candidates, base = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)), root
        for path in candidates:
            kind = kind_of(path)
            if kind is not None and path.resolve() not in seen:  # a file named twice is read once
                seen.add(path.resolve())
                sources.append(SourceFile(path.resolve(), path.relative_to(base).as_posix(), kind))
    if not sources:
        names = ", ".join(str(p) for p in inputs) or "(no inputs given)"
        raise error(f"{none_found} found in: {names}")
    return sources


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _check_text(text: object) -> str | None:
    """The skip reason for a parsed text value, or None when it is a usable document."""
    if not isinstance(text, str):
        return "missing_text"
    if not text.strip():
        return "empty"
    try:
        text.encode("utf-8")  # JSON escapes can produce lone surrogates
    except UnicodeEncodeError:
        return "invalid_utf8"
    return None


def _txt_records(path: Path) -> Iterator[Record]:
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        yield Record(1, raw.count(b"\n", 0, err.start) + 1, None, "invalid_utf8")
        return
    yield Record(1, 1, text, _check_text(text))


def _jsonl_records(path: Path, text_field: str) -> Iterator[Record]:
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield Record(number, number, None, "invalid_utf8")
                continue
            except json.JSONDecodeError:
                yield Record(number, number, None, "malformed_json")
                continue
            text = obj.get(text_field) if isinstance(obj, dict) else None
            yield Record(
                number,
                number,
                text if isinstance(text, str) else None,
                _check_text(text),
            )


def _parquet_records(path: Path, text_field: str) -> Iterator[Record]:
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        for row in range(1, parquet.metadata.num_rows + 1):
            yield Record(row, row, None, "missing_text")
        return
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            yield Record(row, row, text if isinstance(text, str) else None, _check_text(text))


def iter_records(source: SourceFile, text_field: str = "text") -> Iterator[Record]:
    """Every record of one source file, good or bad, in file order."""
    if source.kind == "txt":
        return _txt_records(source.path)
    if source.kind == "jsonl":
        return _jsonl_records(source.path, text_field)
    return _parquet_records(source.path, text_field)
