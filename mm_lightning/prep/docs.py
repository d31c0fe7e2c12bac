"""Turn PDFs into litdata shards of documents: rendered page images interleaved with their text layer.

The output folder holds what :class:`~mm_lightning.data.mixture.long_sources.InterleavedSource` reads::

    OUT/train/, OUT/val/    litdata chunks of records {"images": packed PNG pages, "texts": JSON list of the text
                            before the first page ("") and after each page (its text), "source": the PDF}
    OUT/prep_summary.json   documents and skipped PDFs per split, and the rendering options

Every ``.pdf`` under the inputs is one document. Pages are rendered with pypdfium2 (the ``docs`` extra) at
``dpi``, scaled down to ``max_side`` and stored as PNG, with at most ``max_pages`` pages per document (later pages
are left out). A PDF that does not open or render is reported and skipped as in
:mod:`mm_lightning.prep.media`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from mm_lightning.errors import MMLightningError
from mm_lightning.media.documents import DocumentDecodeError, import_pdfium, render_pdf
from mm_lightning.media.images import encode_image
from mm_lightning.media.interleave import pack_blobs
from mm_lightning.prep.media import Failure, MediaItem, MediaKind, PrepRun, prepare_media_shards
from mm_lightning.prep.text_readers import SourceFile, discover_files

SKIP_REASONS = {
    "bad_pdf": "unreadable or corrupt PDF",
    "unreadable_file": "file unreadable",
}


class DocsPrepError(MMLightningError):
    """PDFs that cannot be prepared (no usable document, or a bad PDF under ``strict``)."""


def find_pdfs(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The ``.pdf`` files of ``inputs`` (files, or folders searched recursively)."""
    return discover_files(
        inputs, lambda path: "pdf" if path.suffix.lower() == ".pdf" else None, DocsPrepError, "No .pdf files"
    )


def iter_pdf(source: SourceFile, options: dict) -> Iterator[MediaItem]:
    """A PDF is one item."""
    yield MediaItem(1, "", (str(source.path), source.key, options["dpi"], options["max_pages"],
                            options["max_side"]), None)  # fmt: skip


def load_pdf(payload: tuple[str, str, float, int, int]) -> dict | Failure:
    """Render one PDF into a shard record (a pool task)."""
    path, key, dpi, max_pages, max_side = payload
    try:
        pages = render_pdf(path, dpi=dpi, max_pages=max_pages, max_side=max_side)
    except DocumentDecodeError as err:
        return Failure("bad_pdf", str(err))
    return {
        "images": pack_blobs([encode_image(page.image) for page in pages]),
        "texts": json.dumps(["", *(page.text for page in pages)]),
        "source": key,
    }


DOCS_KIND = MediaKind(
    noun="document", plural="documents", skip_reasons=SKIP_REASONS, error=DocsPrepError,
    find_sources=find_pdfs, iter_items=iter_pdf, load=load_pdf,
)  # fmt: skip


def prepare_docs_shards(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    dpi: float = 72,
    max_pages: int = 32,
    max_side: int = 896,
    run: PrepRun = PrepRun(),
) -> dict:
    """Write the PDFs of ``inputs`` as documents into ``output_dir/{train/,val/,prep_summary.json}``.

    Args:
        inputs: ``.pdf`` files or folders of them.
        output_dir: a local folder; it must not hold prepared data already unless ``run.overwrite``.
        dpi: render resolution (72 is one pixel per PDF point).
        max_pages: keep the first this many pages of each PDF.
        max_side: page images are scaled down to this longer side.
        run: split share, strictness (a bad PDF: one that does not open or render), rendering processes,
            overwrite, progress and where bad PDFs are reported.

    Returns:
        The summary also written to ``prep_summary.json``.

    Raises:
        DocsPrepError: nothing usable, a bad PDF under ``run.strict``, or an occupied output.
        MissingExtraError: pypdfium2 is not installed.
    """
    import_pdfium()
    if dpi <= 0 or max_pages < 1 or max_side < 1:
        raise DocsPrepError(f"need dpi > 0, max_pages >= 1 and max_side >= 1, got {dpi}, {max_pages}, {max_side}")
    options = {"dpi": dpi, "max_pages": max_pages, "max_side": max_side}
    return prepare_media_shards(DOCS_KIND, inputs, output_dir, options, run)
