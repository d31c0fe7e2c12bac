"""Turn image-caption data (caption files + images, webdataset tars, parquet) into litdata shards.

The output folder holds what :class:`mm_lightning.data.image_text.ImageTextDataModule` streams::

    OUT/train/, OUT/val/    litdata chunks of records {"image": encoded bytes, "caption": str}
    OUT/tokenizer.json      only when one is given (``--tokenizer``): the text stage's tokenizer for the captions
    OUT/prep_summary.json   pairs, resized images and skipped records per split

Images keep their encoding (JPEG, PNG or WebP bytes as stored) unless their longer side exceeds ``max_side``:
those are resized, aspect ratio kept, and re-encoded (JPEG as JPEG, anything else as PNG), as are images in
other formats. Native resolution is otherwise preserved; the datamodule cuts images into patches.

As in :mod:`mm_lightning.prep.text` (whose scan bookkeeping this reuses), a *scan* in the main process
reads every pair, decodes every image (in a process pool) to catch undecodable or truncated ones, reports and
counts the bad pairs and assigns splits by a stable hash of (file, record number); then ``litdata.optimize``
workers re-read the files and write the good pairs of one (file, split) each, skipping exactly what the scan
rejected. Bad pairs are reported, and outputs checked, as in :mod:`mm_lightning.prep.media`.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import litdata
from PIL import Image
from tqdm import tqdm

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.media.images import png_compatible
from mm_lightning.prep.image_readers import (
    SKIP_REASONS,
    STORED_FORMATS,
    ImageInfo,
    ImagePrepError,
    Pair,
    find_image_sources,
    inspect_image,
    iter_pairs,
)
from mm_lightning.prep.media import (
    CHUNK_BYTES,
    PREPARED_NAMES,
    ItemKind,
    SkipReporter,
    check_usable,
    count_workers,
    existing_outputs,
    remove_outputs,
    total_skipped,
    worker_map,
)
from mm_lightning.prep.text import (
    SPLITS,
    START_METHOD,
    CorpusScan,
    WorkItem,
    output_folder,
    read_split_stats,
    split_work,
    write_prep_summary,
)
from mm_lightning.prep.text_readers import SourceFile

IMAGE_KIND = ItemKind(noun="pair", plural="pairs", skip_reasons=SKIP_REASONS, error=ImagePrepError)


class ImageScan(CorpusScan):
    """The text scan's split bookkeeping, plus the pairs whose image failed to decode and the resize count."""

    def __init__(self, sources: list[SourceFile], fields: tuple[str, str], val_fraction: float, max_side: int):
        super().__init__(sources, fields[1], val_fraction)
        self.image_field, self.max_side = fields[0], max_side
        self.bad_images: set[tuple[int, int]] = set()
        self.resized: set[tuple[int, int]] = set()  # good pairs whose image exceeds max_side


def _check_pair(pair: Pair) -> tuple[Pair, ImageInfo | None]:
    """A pool task: the pair without its bytes, with ``bad_image`` as its reason when the image does not decode."""
    if pair.reason is not None:
        return pair, None
    info = inspect_image(pair.image)
    return pair._replace(image=None, reason=info.reason), info


def _checked_pairs(scan: ImageScan, imap: Callable, bar: tqdm) -> Iterator[tuple[int, Pair, ImageInfo | None]]:
    for file_idx, source in enumerate(scan.sources):
        for pair, info in imap(_check_pair, iter_pairs(source, scan.image_field, scan.text_field)):
            bar.update(1)
            yield file_idx, pair, info


def scan_pairs(scan: ImageScan, report: SkipReporter, num_workers: int, progress: bool = True) -> None:
    """Read every pair once: decode images, count and report bad pairs, assign splits."""
    with worker_map(num_workers, chunksize=16) as imap, tqdm(unit=" pairs", desc="scan", disable=not progress) as bar:
        for file_idx, pair, info in _checked_pairs(scan, imap, bar):
            split = scan.split_of(file_idx, pair.index)
            if pair.reason is not None:
                if pair.reason == "bad_image":
                    scan.bad_images.add((file_idx, pair.index))
                scan.skipped[split][pair.reason] += 1
                report(scan.sources[file_idx], pair.where, pair.reason)
                continue
            scan.add_document(file_idx, pair.index, split)
            if max(info.size) > scan.max_side:
                scan.resized.add((file_idx, pair.index))


def resize_to_max_side(data: bytes, max_side: int) -> bytes:
    """The image re-encoded (JPEG as JPEG, others as PNG), scaled down so its longer side is at most ``max_side``."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = "JPEG" if image.format == "JPEG" else "PNG"
        image.load()
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        elif fmt == "PNG":
            image = png_compatible(image)  # CMYK, 32-bit and float TIFFs, ...
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _needs_reencoding(data: bytes, max_side: int) -> bool:
    with Image.open(io.BytesIO(data)) as image:  # the header only
        return image.format not in STORED_FORMATS or max(image.size) > max_side


class ImageShardWriter:
    """The ``litdata.optimize`` function: writes the good pairs of one :class:`WorkItem` (picklable)."""

    def __init__(self, scan: ImageScan):
        self.scan = scan

    def __call__(self, item: WorkItem) -> Iterator[dict]:
        scan, split = self.scan, SPLITS[item.split_idx]
        for pair in iter_pairs(scan.sources[item.file_idx], scan.image_field, scan.text_field):
            key = (item.file_idx, pair.index)
            if pair.index % item.num_parts != item.part or pair.reason is not None or key in scan.bad_images:
                continue
            if scan.split_of(*key) != split:
                continue
            image = pair.image
            if _needs_reencoding(image, scan.max_side):
                image = resize_to_max_side(image, scan.max_side)
            yield {"image": image, "caption": pair.caption}


def prepare_image_text_shards(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    image_field: str = "image",
    caption_field: str = "caption",
    max_side: int = 512,
    val_fraction: float = 0.02,
    tokenizer: str | Path | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Write image-caption pairs into ``output_dir/{train/,val/,prep_summary.json}`` (and ``tokenizer.json``).

    Args:
        inputs: files or folders (searched recursively) of captions ``.jsonl``/``.csv`` files (image paths relative
            to the captions file), webdataset ``.tar`` shards and ``.parquet`` files.
        output_dir: a local folder; it must not hold prepared data already unless ``overwrite``.
        image_field: the image key of captions files (a relative path) and the image-bytes column of parquet.
        caption_field: the caption key of captions files and the caption column of parquet.
        max_side: images whose longer side exceeds this are scaled down to it (aspect ratio kept).
        val_fraction: the expected share of pairs in ``val``; at least one pair goes to each split.
        tokenizer: a ``tokenizer.json`` (the text stage's) copied to the output for the datamodule.
        strict: stop at the first bad pair (bad image, missing or empty caption, malformed record, unreadable file).
        num_workers: processes for decoding and writing (default: the CPU count).
        overwrite: replace the prepared data already in ``output_dir``.
        progress: show progress bars.
        report: where bad-pair messages go (default: stderr).

    Returns:
        The summary also written to ``prep_summary.json``.

    Raises:
        ImagePrepError: nothing usable in the inputs, a bad pair under ``strict``, or an occupied or remote output.
    """
    out = output_folder(output_dir, ImagePrepError)
    if not 0.0 <= val_fraction < 1.0 or max_side < 1:
        raise ImagePrepError(f"need 0 <= val_fraction < 1 and max_side >= 1, got {val_fraction} and {max_side}")
    start = time.perf_counter()
    existing = existing_outputs(IMAGE_KIND, out, overwrite, ("tokenizer.json", *PREPARED_NAMES))
    tok = tokenizer_lib.load_tokenizer(tokenizer) if tokenizer is not None else None
    workers = count_workers(num_workers)
    scan = ImageScan(find_image_sources(inputs), (image_field, caption_field), val_fraction, max_side)
    scan_pairs(scan, SkipReporter(IMAGE_KIND, strict, report), workers, progress)
    check_usable(IMAGE_KIND, sum(scan.documents.values()), scan.skipped, len(scan.sources), inputs)
    scan.balance_splits()
    remove_outputs(existing)
    out.mkdir(parents=True, exist_ok=True)
    if tok is not None:
        tok.save(str(out / "tokenizer.json"))
    for split in SPLITS:
        _write_split(ImageShardWriter(scan), out / split, split, workers, progress)
    summary = _summarize(scan, out, inputs, tokenizer, time.perf_counter() - start)
    write_prep_summary(out, summary)
    return summary


def _write_split(writer: ImageShardWriter, out: Path, split: str, workers: int, progress: bool) -> None:
    items = split_work(writer.scan, split, workers)
    previous_start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(
            fn=writer, inputs=items, output_dir=str(out), chunk_bytes=CHUNK_BYTES,
            num_workers=max(1, min(workers, len(items))), reorder_files=False, keep_data_ordered=True,
            start_method=START_METHOD, verbose=progress,
        )  # fmt: skip
    finally:  # litdata sets the process-wide start method; give the caller's back
        multiprocessing.set_start_method(previous_start_method, force=True)


def _summarize(scan: ImageScan, out: Path, inputs, tokenizer, seconds: float) -> dict:
    splits = {}
    for split in SPLITS:
        written = read_split_stats(out / split)["documents"]
        if written != scan.documents[split]:
            raise RuntimeError(f"{split}: wrote {written} pairs, scanned {scan.documents[split]}")
        resized = sum(scan.split_of(*key) == split for key in scan.resized)
        splits[split] = {"pairs": written, "resized": resized, "skipped": dict(sorted(scan.skipped[split].items()))}
    return {
        "inputs": [str(p) for p in inputs],
        "files": len(scan.sources),
        "image_field": scan.image_field,
        "caption_field": scan.text_field,
        "max_side": scan.max_side,
        "val_fraction": scan.val_fraction,
        "tokenizer": str(tokenizer) if tokenizer else None,
        "pairs": sum(s["pairs"] for s in splits.values()),
        "skipped": total_skipped(scan.skipped),
        "splits": splits,
        "seconds": round(seconds, 2),
    }
