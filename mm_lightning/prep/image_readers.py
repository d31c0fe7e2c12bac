"""Reading raw image-caption data pair by pair: caption files, webdataset tars and parquet.

Three layouts are read:

- a **captions file** (``.jsonl`` records or ``.csv`` rows) naming an image file relative to the captions file's
  folder and its caption;
- **webdataset tars** as img2dataset writes them: members ``KEY.jpg|jpeg|png|webp`` with ``KEY.txt`` (the
  caption) or ``KEY.json`` (a ``"caption"`` field), the members of one sample adjacent;
- **parquet** with a column of encoded image bytes (or Hugging Face ``{"bytes": ...}`` structs) and a caption
  column.

Every pair comes back with its position (for reports and the split hash) and its image bytes and caption, or the
reason it is skipped. A file that cannot be read at all, or lacks the named columns, yields one
``unreadable_file`` pair instead of failing the whole preparation. Images are not decoded here: see
:func:`inspect_image`.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq
from PIL import Image

from mm_lightning.errors import MMLightningError
from mm_lightning.prep.text_readers import SourceFile, discover_files

SOURCE_SUFFIXES = {".jsonl": "captions", ".csv": "captions", ".tar": "webdataset", ".parquet": "parquet"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
STORED_FORMATS = ("JPEG", "PNG", "WEBP")  # kept as encoded; other formats are re-encoded as PNG
SKIP_REASONS = {
    "bad_image": "undecodable or truncated image",
    "missing_image": "image missing",
    "missing_caption": "caption missing or not a string",
    "empty_caption": "empty or whitespace-only caption",
    "malformed": "malformed record",
    "unreadable_file": "file unreadable or lacking the image/caption fields",
}


class ImagePrepError(MMLightningError):
    """Image-text data that cannot be prepared (no usable pairs, or a bad pair under ``strict``)."""


class Pair(NamedTuple):
    """One image-caption record of a source file, or the reason it is skipped."""

    index: int  # record number within the file (1-based), part of the split hash
    where: str  # line, row or member name to report
    image: bytes | None
    caption: str | None
    reason: str | None


class ImageInfo(NamedTuple):
    """What decoding an image learnt: the skip reason, or its format and size."""

    reason: str | None
    format: str | None = None
    size: tuple[int, int] = (0, 0)  # (width, height)


def find_image_sources(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The caption files, tars and parquet files of ``inputs`` (files, or folders searched recursively).

    Raises:
        ImagePrepError: when an input does not exist, or there is no supported file at all.
    """
    return discover_files(
        inputs, lambda path: SOURCE_SUFFIXES.get(path.suffix.lower()), ImagePrepError,
        "No captions .jsonl/.csv, webdataset .tar or .parquet files",
    )  # fmt: skip


def caption_reason(caption: object) -> str | None:
    """The skip reason of a caption value, or None when usable."""
    if not isinstance(caption, str):
        return "missing_caption"
    return None if caption.strip() else "empty_caption"


def _pair(index: int, where: str, image: bytes | None, caption: object) -> Pair:
    reason = caption_reason(caption) or (None if image else "missing_image")
    return Pair(index, where, image if reason is None else None, caption if reason is None else None, reason)


def inspect_image(data: bytes) -> ImageInfo:
    """Decode an image fully (JPEGs at reduced scale, which still reads every byte) to catch bad or truncated ones."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            info = ImageInfo(None, image.format, image.size)
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            image.load()
    except Exception:  # noqa: BLE001 - decoders of untrusted bytes raise many types; any of them means "bad image"
        return ImageInfo("bad_image")
    return info


def _caption_file_pairs(path: Path, image_field: str, caption_field: str) -> Iterator[Pair]:
    for number, row in caption_file_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get(image_field), str):
            yield Pair(number, f"line {number}", None, None, "malformed")
            continue
        image_path = path.parent / row[image_field]
        image = image_path.read_bytes() if image_path.is_file() else None
        yield _pair(number, f"line {number} ({row[image_field]})", image, row.get(caption_field))


def caption_file_rows(path: Path) -> Iterator[tuple[int, object]]:
    """``(line number, row)`` for every row of a captions ``.csv`` or ``.jsonl`` file (``None`` for bad JSON)."""
    return _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    yield number, json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    yield number, None


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        yield from ((reader.line_num, row) for row in reader)


def _tar_pairs(path: Path) -> Iterator[Pair]:
    index, key, files = 0, None, {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name, ext = _split_key(member.name)
            if name != key and files:
                index += 1
                yield _tar_sample(index, key, files)
                files = {}
            key = name
            files[ext.lower()] = tar.extractfile(member).read()
    if files:
        yield _tar_sample(index + 1, key, files)


def _split_key(name: str) -> tuple[str, str]:
    """``("dir/000001", "jpg")`` for ``dir/000001.jpg``: the sample key and extension, webdataset style."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _tar_sample(index: int, key: str, files: dict[str, bytes]) -> Pair:
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    where = f"{key}.{ext or '?'}"
    if "txt" in files:
        try:
            return _pair(index, where, files.get(ext), files["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            return Pair(index, where, None, None, "malformed")
    try:
        meta = json.loads(files["json"]) if "json" in files else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Pair(index, where, None, None, "malformed")
    return _pair(index, where, files.get(ext), meta.get("caption") if isinstance(meta, dict) else None)


def _parquet_pairs(path: Path, image_field: str, caption_field: str) -> Iterator[Pair]:
    parquet = pq.ParquetFile(path)
    missing = [c for c in (image_field, caption_field) if c not in parquet.schema_arrow.names]
    if missing:
        yield Pair(0, f"no column(s) {', '.join(map(repr, missing))}", None, None, "unreadable_file")
        return
    row = 0
    for batch in parquet.iter_batches(columns=[image_field, caption_field], batch_size=256):
        for image, caption in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            row += 1
            image = image.get("bytes") if isinstance(image, dict) else image
            yield _pair(row, f"row {row}", image if isinstance(image, bytes) else None, caption)


def iter_pairs(source: SourceFile, image_field: str = "image", caption_field: str = "caption") -> Iterator[Pair]:
    """Every pair of one source file, good or bad, in file order; a read failure ends it with one bad pair."""
    if source.kind == "captions":
        pairs = _caption_file_pairs(source.path, image_field, caption_field)
    elif source.kind == "webdataset":
        pairs = _tar_pairs(source.path)
    else:
        pairs = _parquet_pairs(source.path, image_field, caption_field)
    last = 0
    try:
        for pair in pairs:
            last = pair.index
            yield pair
    except Exception as err:  # noqa: BLE001 - tar, csv, parquet and OS errors: report the file, keep going
        yield Pair(last + 1, f"after record {last}: {type(err).__name__}: {err}", None, None, "unreadable_file")
