"""Turn raw text corpora (.txt, .jsonl, .parquet, optionally gzipped) into litdata token shards.

The output folder holds what :class:`mm_lightning.data.text.TextDataModule` streams::

    OUT/tokenizer.json      byte-level BPE (trained here unless one is given)
    OUT/train/, OUT/val/    litdata chunks in the ``TokensLoader`` layout: one 1-D token tensor per
                            document, each ending with the end-of-document token
    OUT/prep_summary.json   documents, tokens and skipped records per split

Two passes keep the bookkeeping in one process: a *scan* in the main process reads every record, reports
and counts the bad ones and assigns each document to a split (and, when no tokenizer is given, feeds the
good texts to the BPE trainer as it goes); then ``litdata.optimize`` workers re-read the files and
tokenize the good documents of one (file, split) pair each. Workers apply the same deterministic checks,
so they skip exactly what the scan counted, and the scan's document counts are checked against the
written index at the end.

The split of a record is a hash of (its file's path relative to the input, its record number), so it
does not depend on worker count, file order or the other files of the corpus. A record is a document: a .jsonl
line, a parquet row, or one of the documents a .txt file is cut into
(:class:`~mm_lightning.prep.text_readers.TxtDocuments`: paragraphs grouped up to ``doc_chars`` by default), so one
large .txt is split by documents too.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import litdata
import torch
from tqdm import tqdm

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.prep.text_readers import (
    DOC_CHARS,
    SKIP_REASONS,
    Record,
    SourceFile,
    TextPrepError,
    TxtDocuments,
    find_source_files,
    iter_records,
)

SPLITS = ("train", "val")
STRICT_REASONS = ("invalid_utf8", "malformed_json", "missing_text")
# Tokens per litdata chunk by default (8 MiB at uint16). Training shuffles the order of chunks and the blocks inside
# each chunk, but reads one chunk at a time, so a run shorter than the corpus only mixes as many documents as the
# chunks it visits: small corpora (and the demos) want small chunks; a large corpus has thousands of them anyway.
CHUNK_TOKENS = 1 << 22
MAX_REPORTED = 100  # bad records printed one by one; all of them are counted
_ENCODE_BATCH = 256
# fork starts litdata workers in milliseconds (spawn re-imports torch in each worker and helper process: ~5 s
# per split); the workers only read files, tokenize and build CPU tensors. macOS keeps spawn.
START_METHOD = os.environ.get("MM_LIGHTNING_PREP_START_METHOD") or ("fork" if sys.platform == "linux" else "spawn")


def output_folder(output_dir: str | Path, error: type[Exception]) -> Path:
    """``output_dir`` as the local folder every preparation writes; a URL (``s3://...``) is refused with ``error``.

    The shards, ``tokenizer.json`` and ``prep_summary.json`` are written with local file operations (a URL would
    become a local folder named ``s3:``), so remote data is prepared locally and then copied to its bucket.
    """
    if "://" in str(output_dir):
        raise error(
            f"the output {output_dir} is a URL, but preparation writes to a local folder: prepare into a local "
            f"folder, then copy it to {output_dir} (aws s3 sync, gcloud storage rsync, ...) to stream it from there"
        )
    return Path(output_dir)


def split_of(key: str, index: int, val_fraction: float) -> str:
    """The split of record ``index`` of file ``key``: a stable hash compared with ``val_fraction``."""
    return "val" if unit_hash(key, index) < val_fraction else "train"


def unit_hash(key: str, index: int) -> float:
    """A stable point in [0, 1) for record ``index`` of file ``key`` (the split hash)."""
    digest = hashlib.blake2b(f"{key}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass
class CorpusScan:
    """What the scan pass learnt: per-split counts, documents per (file, split), and split overrides."""

    sources: list[SourceFile]
    text_field: str
    val_fraction: float
    txt: TxtDocuments = field(default_factory=TxtDocuments)
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    file_documents: dict[tuple[int, str], int] = field(default_factory=Counter)
    overrides: dict[tuple[int, int], str] = field(default_factory=dict)
    _extremes: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    def split_of(self, file_idx: int, index: int) -> str:
        """The split of record ``index`` of source file ``file_idx``, overrides included."""
        override = self.overrides.get((file_idx, index))
        return override or split_of(self.sources[file_idx].key, index, self.val_fraction)

    def add_document(self, file_idx: int, index: int, split: str) -> None:
        """Count a good document and remember the lowest/highest hashes (candidates to move between splits)."""
        self.documents[split] += 1
        self.file_documents[file_idx, split] += 1
        point = (unit_hash(self.sources[file_idx].key, index), file_idx, index)
        if "low" not in self._extremes or point < self._extremes["low"]:
            self._extremes["low"] = point
        if "high" not in self._extremes or point > self._extremes["high"]:
            self._extremes["high"] = point

    def balance_splits(self) -> None:
        """With at least two documents, move one so that neither split is empty."""
        for empty, end in (("val", "low"), ("train", "high")):
            other = "train" if empty == "val" else "val"
            if self.documents[empty] == 0 and self.documents[other] >= 2:
                _, file_idx, index = self._extremes[end]
                self.overrides[file_idx, index] = empty
                for split, delta in ((empty, 1), (other, -1)):
                    self.documents[split] += delta
                    self.file_documents[file_idx, split] += delta


class _Reporter:
    """Prints bad records as ``file:line: reason`` (the first MAX_REPORTED of them) and fails under strict."""

    def __init__(self, strict: bool, write: Callable[[str], None]):
        self.strict, self.write, self.count = strict, write, 0

    def __call__(self, source: SourceFile, record: Record) -> None:
        message = f"{source.path}:{record.line}: {SKIP_REASONS[record.reason]}"
        if self.strict and record.reason in STRICT_REASONS:
            raise TextPrepError(f"{message} (--strict: stopping at the first bad record)")
        if record.reason == "empty":
            return
        self.count += 1
        if self.count <= MAX_REPORTED:
            self.write(f"skipped {message}")
        elif self.count == MAX_REPORTED + 1:
            self.write(f"... more bad records not shown (first {MAX_REPORTED} printed; all are counted)")


def scan_texts(scan: CorpusScan, report: _Reporter, progress: bool = True) -> Iterator[str]:
    """Read every record once: count and report bad ones, assign splits and yield the good texts."""
    total = sum(s.path.stat().st_size for s in scan.sources)
    with tqdm(total=total, unit="B", unit_scale=True, desc="scan", disable=not progress) as bar:
        for file_idx, source in enumerate(scan.sources):
            try:
                for record in iter_records(source, scan.text_field, scan.txt):
                    split = scan.split_of(file_idx, record.index)
                    if record.reason is not None:
                        scan.skipped[split][record.reason] += 1
                        report(source, record)
                        continue
                    scan.add_document(file_idx, record.index, split)
                    yield record.text
            except (OSError, EOFError, ValueError) as err:
                raise TextPrepError(f"{source.path}: cannot read ({err})") from None
            bar.update(source.path.stat().st_size)


class WorkItem(NamedTuple):
    """One ``litdata.optimize`` input: the documents of one split in one file, or a share of them."""

    file_idx: int
    split_idx: int
    part: int = 0  # this item takes the records whose index % num_parts == part
    num_parts: int = 1


class ShardWriter:
    """The ``litdata.optimize`` function: tokenizes the good documents of one :class:`WorkItem`.

    Picklable (spawned workers get a copy); the tokenizer is loaded once per worker.
    """

    def __init__(self, scan: CorpusScan, tokenizer_path: str, dtype: torch.dtype):
        self.scan, self.tokenizer_path, self.dtype = scan, tokenizer_path, dtype
        self._tok = None

    def __call__(self, item: WorkItem) -> Iterator[torch.Tensor]:
        if self._tok is None:
            self._tok = tokenizer_lib.load_tokenizer(self.tokenizer_path)
        source, split = self.scan.sources[item.file_idx], SPLITS[item.split_idx]
        eod = tokenizer_lib.eod_id(self._tok)
        batch: list[str] = []
        for record in iter_records(source, self.scan.text_field, self.scan.txt):
            mine = record.index % item.num_parts == item.part
            if mine and record.reason is None and self.scan.split_of(item.file_idx, record.index) == split:
                batch.append(record.text)
            if len(batch) == _ENCODE_BATCH:
                yield from self._encode(batch, eod)
                batch = []
        yield from self._encode(batch, eod)

    def _encode(self, texts: list[str], eod: int) -> Iterator[torch.Tensor]:
        for ids in tokenizer_lib.encode_batch(self._tok, texts):
            ids.append(eod)
            yield torch.tensor(ids, dtype=self.dtype)  # [L + 1], EOD last


def prepare_text_shards(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    vocab_size: int = 8192,
    text_field: str = "text",
    val_fraction: float = 0.02,
    strict: bool = False,
    num_workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    txt_split: str = "blank-lines",
    doc_chars: int = DOC_CHARS,
) -> dict:
    """Tokenize a corpus into ``output_dir/{tokenizer.json,train/,val/,prep_summary.json}``.

    Args:
        inputs: files or folders (searched recursively) of .txt, .jsonl, .parquet (.txt.gz, .jsonl.gz too).
            A .jsonl line or a parquet row is one document; a .txt file is cut into documents (``txt_split``).
        output_dir: a local folder (not a URL); it must not hold prepared data already unless ``overwrite``.
        tokenizer: a ``tokenizer.json`` to use (copied to the output); trained on the corpus when ``None``.
        vocab_size: the size of the trained tokenizer (ignored when ``tokenizer`` is given).
        text_field: the text key of .jsonl records and the text column of .parquet files.
        val_fraction: the expected share of documents in ``val``; at least one document goes to each split.
        strict: stop at the first bad record (invalid UTF-8, malformed JSON, missing text field).
        num_workers: ``litdata.optimize`` processes (default: the CPU count).
        overwrite: replace the prepared data already in ``output_dir``.
        progress: show progress bars.
        report: where bad-record messages go (default: stderr).
        chunk_tokens: tokens per litdata chunk; a run that streams a fraction of the corpus mixes documents
            from only the chunks it visits, so keep chunks to a small share of the corpus.
        txt_split: how a .txt file becomes documents: ``blank-lines`` (paragraphs grouped up to ``doc_chars``
            characters), ``size`` (lines grouped up to ``doc_chars``) or ``file`` (the whole file is one document).
        doc_chars: the most characters of a .txt document (``blank-lines`` and ``size``).

    Returns:
        The summary also written to ``prep_summary.json``.

    Raises:
        TextPrepError: nothing usable in the inputs, a bad record under ``strict``, or an occupied or remote output.
    """
    out = output_folder(output_dir, TextPrepError)
    if not 0.0 <= val_fraction < 1.0:
        raise TextPrepError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_tokens < 1:
        raise TextPrepError(f"chunk_tokens must be positive, got {chunk_tokens}")
    txt = TxtDocuments(txt_split, doc_chars)
    start = time.perf_counter()
    existing = _existing_outputs(out, overwrite)
    scan = CorpusScan(find_source_files(inputs), text_field, val_fraction, txt)
    reporter = _Reporter(strict, report or (lambda msg: tqdm.write(msg, file=sys.stderr)))
    texts = scan_texts(scan, reporter, progress)
    tok = _scan_and_get_tokenizer(texts, tokenizer, vocab_size)
    _check_documents(scan, inputs)
    scan.balance_splits()
    _replace_outputs(out, existing)
    tok.save(str(out / "tokenizer.json"))
    dtype = torch.uint16 if tok.get_vocab_size() <= 1 << 16 else torch.int32
    writer = ShardWriter(scan, str(out / "tokenizer.json"), dtype)
    for split in SPLITS:
        _write_split(writer, out / split, split, num_workers, progress, chunk_tokens)
    summary = _summarize(scan, out, tok, inputs, tokenizer, time.perf_counter() - start)
    write_prep_summary(out, summary)
    return summary


def _existing_outputs(out: Path, overwrite: bool) -> list[Path]:
    """The prepared data already in ``out`` (to replace once the scan succeeded); refused unless ``overwrite``."""
    existing = [out / name for name in ("tokenizer.json", "prep_summary.json", *SPLITS) if (out / name).exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        raise TextPrepError(f"{out} already holds prepared data ({names}); pass --overwrite or choose another folder")
    return existing


def _replace_outputs(out: Path, existing: list[Path]) -> None:
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _scan_and_get_tokenizer(texts: Iterator[str], tokenizer: str | Path | None, vocab_size: int):
    """Run the scan, training the BPE on the good texts when no tokenizer is given."""
    if tokenizer is not None:
        tok = tokenizer_lib.load_tokenizer(tokenizer)
        for _ in texts:
            pass
        return tok
    return tokenizer_lib.train_bpe_tokenizer(texts, vocab_size)


def _check_documents(scan: CorpusScan, inputs: Sequence[str | Path]) -> None:
    total = sum(scan.documents.values())
    if total >= 2:
        return
    names = ", ".join(str(p) for p in inputs)
    skipped = sum((scan.skipped[s] for s in SPLITS), Counter())
    detail = ", ".join(f"{n} {SKIP_REASONS[r]}" for r, n in sorted(skipped.items())) or "no records"
    found = f"{len(scan.sources)} file(s) scanned: {detail}"
    if total == 0:
        raise TextPrepError(f"No usable documents in {names} ({found})")
    hint = ""
    if any(source.kind == "txt" for source in scan.sources):
        hint = f" (a .txt is cut into documents of up to {scan.txt.doc_chars} characters: --txt-split, --doc-chars)"
    raise TextPrepError(f"Only one usable document in {names} ({found}); at least 2 are needed (train and val){hint}")


def _write_split(
    writer: ShardWriter, out: Path, split: str, num_workers: int | None, progress: bool, chunk_tokens: int
) -> None:
    items = split_work(writer.scan, split, num_workers or os.cpu_count() or 1)
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(items)))
    previous_start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        _optimize(writer, items, out, workers, progress, chunk_tokens)
    finally:  # litdata sets the process-wide start method; give the caller's back
        multiprocessing.set_start_method(previous_start_method, force=True)


def split_work(scan: CorpusScan, split: str, workers: int) -> list[WorkItem]:
    """One item per file with documents in ``split``; with fewer files than workers, files are shared out."""
    files = [i for i in range(len(scan.sources)) if scan.file_documents[i, split]]
    items = []
    for file_idx in files:
        parts = 1 if len(files) >= workers else min(workers, max(1, scan.file_documents[file_idx, split] // 64))
        items += [WorkItem(file_idx, SPLITS.index(split), part, parts) for part in range(parts)]
    return items


def _optimize(writer: ShardWriter, items: list[WorkItem], out: Path, workers: int, progress: bool, chunk_tokens: int):
    litdata.optimize(
        fn=writer,
        inputs=items,
        output_dir=str(out),
        chunk_size=chunk_tokens,
        item_loader=litdata.TokensLoader(),
        num_workers=workers,
        reorder_files=False,
        keep_data_ordered=True,
        start_method=START_METHOD,
        verbose=progress,
    )


def read_split_stats(split_dir: Path) -> dict[str, int]:
    """Documents, tokens (EOD included) and chunks of one written split, from its litdata ``index.json``."""
    chunks = json.loads((split_dir / "index.json").read_text(encoding="utf-8"))["chunks"]
    return {
        "documents": sum(c["chunk_size"] for c in chunks),
        "tokens": sum(c["dim"] or 0 for c in chunks),
        "chunks": len(chunks),
    }


def write_prep_summary(out: Path, summary: dict) -> None:
    """Write ``out/prep_summary.json``, the file whose presence marks a complete preparation."""
    (out / "prep_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _summarize(scan: CorpusScan, out: Path, tok, inputs, tokenizer, seconds: float) -> dict:
    splits = {}
    for split in SPLITS:
        stats = read_split_stats(out / split)
        if stats["documents"] != scan.documents[split]:
            raise RuntimeError(f"{split}: wrote {stats['documents']} documents, scanned {scan.documents[split]}")
        splits[split] = {**stats, "skipped": dict(sorted(scan.skipped[split].items()))}
    total_skipped = sum((scan.skipped[s] for s in SPLITS), Counter())
    return {
        "inputs": [str(p) for p in inputs],
        "files": len(scan.sources),
        "text_field": scan.text_field,
        "txt_documents": {"split": scan.txt.split, "doc_chars": scan.txt.doc_chars},
        "val_fraction": scan.val_fraction,
        "tokenizer": {
            "source": str(tokenizer) if tokenizer else "trained",
            "vocab_size": tok.get_vocab_size(),
        },
        "documents": sum(s["documents"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "skipped": dict(sorted(total_skipped.items())),
        "splits": splits,
        "seconds": round(seconds, 2),
    }
