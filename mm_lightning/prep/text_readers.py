"""Reading raw text corpora record by record: .txt, .jsonl and .parquet, gzip allowed.

Every record comes back with its position (for reports and for the split hash) and either its text or the
reason it must be skipped (invalid UTF-8, malformed JSON, missing or non-string text field, empty text), so
that the scan pass and the ``litdata.optimize`` workers of :mod:`mm_lightning.prep.text` apply exactly
the same checks.

A .jsonl line or a parquet row is one document. A .txt file is cut into documents (:class:`TxtDocuments`):
paragraphs (separated by blank lines) grouped up to ``doc_chars`` characters, or pieces of about ``doc_chars``
characters cut at line ends, or the whole file, so one large .txt is a corpus whose validation split takes
documents. Reading is line by line (a line, not the file, has to fit in memory), and a line that is not UTF-8
skips only the document it falls in.
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


TXT_SPLITS = ("blank-lines", "size", "file")
DOC_CHARS = 8000


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


@dataclass(frozen=True)
class TxtDocuments:
    """How a .txt file is cut into documents.

    Args:
        split: ``blank-lines``: paragraphs (runs of lines between blank lines) grouped into documents of up to
            ``doc_chars`` characters; ``size``: lines grouped into documents of up to ``doc_chars`` characters;
            ``file``: the whole file is one document. A paragraph or line longer than ``doc_chars`` is cut at white
            space.
        doc_chars: the most characters of a document (not for ``file``).
    """

    split: str = "blank-lines"
    doc_chars: int = DOC_CHARS

    def __post_init__(self) -> None:
        if self.split not in TXT_SPLITS:
            raise TextPrepError(f"txt split {self.split!r} is not one of {', '.join(TXT_SPLITS)}")
        if self.doc_chars < 1:
            raise TextPrepError(f"doc_chars must be at least 1 character, got {self.doc_chars}")


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


def _txt_records(path: Path, how: TxtDocuments) -> Iterator[Record]:
    if how.split == "file":
        yield _whole_file(path)
        return
    lines, limit = _lines(path), how.doc_chars
    units = _paragraphs(lines, limit) if how.split == "blank-lines" else _single_lines(lines)
    count = 0
    for count, (line, text, bad_line) in enumerate(_group(_cut(units, limit), limit), start=1):
        if bad_line:
            yield Record(count, bad_line, None, "invalid_utf8")
        else:
            yield Record(count, line, text, _check_text(text))
    if count == 0:  # nothing but white space
        yield Record(1, 1, "", "empty")


def _whole_file(path: Path) -> Record:
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Record(1, raw.count(b"\n", 0, err.start) + 1, None, "invalid_utf8")
    return Record(1, 1, text, _check_text(text))


class _Unit(NamedTuple):
    """A piece of a .txt that stays whole in a document unless longer than ``doc_chars``: a paragraph or a line."""

    line: int  # its first line
    separator: str  # the blank lines before it: kept inside a document, dropped where a document starts
    text: str
    bad_line: int | None  # a line of it that is not UTF-8


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of every line, its line end kept; ``None`` for a line that is not UTF-8 (a newline
    byte never falls inside a UTF-8 character, so one bad line spoils no other)."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _single_lines(lines: Iterator[tuple[int, str | None]]) -> Iterator[_Unit]:
    for number, text in lines:
        yield _Unit(number, "", text or "", None if text is not None else number)


def _paragraphs(lines: Iterator[tuple[int, str | None]], limit: int) -> Iterator[_Unit]:
    """Runs of non-blank lines, each with the blank lines before it; a run is handed on in parts of about
    ``limit`` characters, so that a file without blank lines is never held whole."""
    separator, body, size, first, bad = "", [], 0, 0, None
    for number, text in lines:
        if text is not None and not text.strip():
            if body:
                yield _Unit(first, separator, "".join(body), bad)
                separator, body, size, bad = "", [], 0, None
            separator += text
            continue
        if size >= limit:  # the paragraph goes on in a unit with no separator: the same text once grouped
            yield _Unit(first, separator, "".join(body), bad)
            separator, body, size, bad = "", [], 0, None
        if not body:
            first = number
        body.append(text or "")
        size += len(body[-1])
        bad = bad if text is not None else (bad or number)
    if body:
        yield _Unit(first, separator, "".join(body), bad)


def _cut(units: Iterator[_Unit], limit: int) -> Iterator[_Unit]:
    """Units of at most ``limit`` characters: a longer one is cut after a line end in the second half of the limit,
    else after its last space within the limit, else at the limit."""
    for unit in units:
        text, line, separator = unit.text, unit.line, unit.separator
        while len(text) > limit:
            at = text.rfind("\n", limit // 2, limit)
            end = (at if at >= 0 else text.rfind(" ", 0, limit)) + 1 or limit
            yield _Unit(line, separator, text[:end], unit.bad_line)
            line, separator, text = line + text.count("\n", 0, end), "", text[end:]
        yield _Unit(line, separator, text, unit.bad_line)


def _group(units: Iterator[_Unit], limit: int) -> Iterator[tuple[int, str, int | None]]:
    """``(first line, text, a line that is not UTF-8)`` of documents: consecutive units while they fit in ``limit``
    characters (blank lines between them kept), none starting with white space alone."""
    parts: list[str] = []
    size, first, bad = 0, 0, None
    for unit in units:
        if not parts and not unit.text.strip() and not unit.bad_line:  # no document starts with white space alone
            continue
        if parts and size + len(unit.separator) + len(unit.text) > limit:
            yield first, "".join(parts), bad
            parts, size, bad = [], 0, None
        if not parts:
            first, piece = unit.line, unit.text
        else:
            piece = unit.separator + unit.text
        parts.append(piece)
        size += len(piece)
        bad = bad or unit.bad_line
    if parts:
        yield first, "".join(parts), bad


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


def iter_records(source: SourceFile, text_field: str = "text", txt: TxtDocuments = TxtDocuments()) -> Iterator[Record]:
    """Every record of one source file, good or bad, in file order (a .txt file's documents as ``txt`` cuts it)."""
    if source.kind == "txt":
        return _txt_records(source.path, txt)
    if source.kind == "jsonl":
        return _jsonl_records(source.path, text_field)
    return _parquet_records(source.path, text_field)
