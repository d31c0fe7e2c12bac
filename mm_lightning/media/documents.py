"""Documents for the long-context stage: pages as images interleaved with their text.

Kimi-VL's long-context data includes long documents read as page images. A PDF page is rendered to an image
with pypdfium2 (``pip install 'mm_lightning[docs]'``, imported only when a PDF is opened) and its text layer is
extracted alongside (empty for scanned pages). A document becomes one ``MixSample`` in reading order: an
optional title, then per page its image span ``<|image_start|> <|image|> <|image_end|>`` followed by the page's
text, then EOD (:func:`build_interleaved_sample`). The same layout serves any interleaved text-and-image
document (``texts[0], image 0, texts[1], ..., image n-1, texts[n]``), such as the demo's scene documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mm_lightning.errors import MMLightningError
from mm_lightning.media.images import fit_within, image_patches
from mm_lightning.media.interleave import MixSample, interleave
from mm_lightning.media.video import MissingExtraError

PDF_POINTS_PER_INCH = 72


class DocumentDecodeError(MMLightningError):
    """A PDF that cannot be opened or rendered (corrupt, truncated, encrypted, not a PDF)."""


@dataclass(frozen=True)
class Page:
    """One rendered page: its image and its text layer."""

    image: Image.Image
    text: str


def import_pdfium() -> Any:
    """The ``pypdfium2`` module, or a :class:`MissingExtraError` naming the ``docs`` extra."""
    try:
        import pypdfium2
    except ImportError:
        raise MissingExtraError(
            "Reading PDFs needs pypdfium2: pip install 'mm_lightning[docs]' (or pip install pypdfium2)"
        ) from None
    return pypdfium2


def render_pdf(
    source: str | Path | bytes, dpi: float = 72, max_pages: int | None = None, max_side: int | None = None
) -> list[Page]:
    """Render the pages of a PDF (a path or its bytes) with their text, in order.

    Args:
        source: the PDF file or its bytes.
        dpi: render resolution (72 gives one pixel per PDF point).
        max_pages: keep only the first this many pages (all when None).
        max_side: scale page images down to this longer side (None keeps the rendered size).

    Raises:
        MissingExtraError: pypdfium2 is not installed.
        DocumentDecodeError: the PDF cannot be opened or a page cannot be rendered, or it has no page.
    """
    pdfium = import_pdfium()
    try:
        pdf = pdfium.PdfDocument(source if isinstance(source, bytes) else str(source))
    except Exception as err:  # noqa: BLE001 - PdfiumError and OS errors on untrusted files
        raise DocumentDecodeError(f"{type(err).__name__}: {err}") from None
    try:
        count = len(pdf) if max_pages is None else min(len(pdf), max_pages)
        if count == 0:
            raise DocumentDecodeError("no pages")
        return [_render_page(pdf, index, dpi, max_side) for index in range(count)]
    finally:
        pdf.close()


def _render_page(pdf: Any, index: int, dpi: float, max_side: int | None) -> Page:
    try:
        page = pdf[index]
        image = page.render(scale=dpi / PDF_POINTS_PER_INCH).to_pil().convert("RGB")
        textpage = page.get_textpage()
        text = textpage.get_text_bounded().replace("\r\n", "\n").strip()
        textpage.close()
        page.close()
    except Exception as err:  # noqa: BLE001
        raise DocumentDecodeError(f"page {index + 1}: {type(err).__name__}: {err}") from None
    return Page(fit_within(image, max_side) if max_side else image, text)


def build_interleaved_sample(
    texts: Sequence[str],
    images: Sequence[Image.Image | bytes],
    tokenizer,
    patch_size: int = 14,
    max_patches_per_image: int = 256,
    source: str = "interleaved",
) -> Any:
    """``texts[0], image 0, texts[1], ..., texts[n]`` and EOD as a ``MixSample`` (loss on every text token).

    Args:
        texts: ``len(images) + 1`` text segments (empty ones add nothing).
        images: PIL images or encoded image bytes.
        tokenizer: the project tokenizer.
        patch_size: patch side in pixels.
        max_patches_per_image: cap on each image's patches.
        source: the sample's source name.
    """
    ids = interleave(tokenizer, texts, len(images))
    patches = [image_patches(image, patch_size, max_patches_per_image) for image in images]
    return MixSample(ids, patches, None, source)


def build_document_sample(
    pages: Sequence[Page],
    tokenizer,
    title: str = "",
    patch_size: int = 14,
    max_patches_per_page: int = 256,
    source: str = "document",
) -> Any:
    """A document as a ``MixSample``: the title, then each page's image followed by its text, then EOD."""
    texts = [title, *(page.text for page in pages)]
    images = [page.image for page in pages]
    return build_interleaved_sample(texts, images, tokenizer, patch_size, max_patches_per_page, source)
