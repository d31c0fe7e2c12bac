"""Packaged demo corpora, prepared on first use into a local cache.

``"demo:sotu"`` is the U.S. State of the Union addresses 1790-2021 (233 documents, 10.7 MB of text, public
domain; see ``assets/sotu/PROVENANCE.md``), small enough to train a tiny LLM on a laptop CPU.
``"demo:emoji-scenes"`` is an image-text corpus of synthetic captioned scenes of Noto emoji
(:mod:`mm_lightning.demo.emoji_scenes`, Apache-2.0 art; see ``assets/emoji/PROVENANCE.md``), its captions
tokenized with the text demo's tokenizer. The prepared shards live in ``$MM_LIGHTNING_CACHE/demo/<name>-<version>``
(default ``~/.cache/mm_lightning``); a build goes to a temporary folder next to it and is renamed into place when
complete, so an interrupted build never leaves a half-written cache, and concurrent builds (several ranks) keep the
first finished one.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mm_lightning.demo.emoji_scenes import Scene, SceneConfig, emoji_name, generate_scene, write_scene_shards
from mm_lightning.demo.recall import RecallConfig, address_sentences, recall_document
from mm_lightning.errors import ConfigError
from mm_lightning.prep.text import prepare_text_shards

DEMO_PREFIX = "demo:"
_PACKAGE_DIR = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class DemoText:
    """A packaged text corpus and how to prepare it."""

    source: Path
    """The packaged corpus file."""
    version: str
    """Bumped whenever the corpus or the recipe below changes, so stale caches are not reused."""
    vocab_size: int = 8192
    """Size of the BPE tokenizer trained on the corpus."""
    val_fraction: float = 0.02
    """Share of documents held out for validation."""
    captions_from: str | None = None
    """An image-text demo whose *train-split* captions join the corpus as documents (never val compositions)."""
    caption_documents: int = 0
    """How many train-split scene captions to add (scenes beyond the image demo's own are new train scenes)."""
    recall_documents: int = 0
    """How many recall documents (:mod:`mm_lightning.demo.recall`) to spread between the corpus's documents."""
    recall: RecallConfig = RecallConfig()
    """The shape of those recall documents."""
    tokenizer_demo: str | None = None
    """Another text demo whose tokenizer to reuse instead of training one (keeps one vocabulary)."""
    chunk_tokens: int = 1 << 14
    """Tokens per litdata chunk: a 300-step demo streams a fifth of the corpus, which must still be a mix of
    all of it (one 16M-token chunk per input left the captions of ``sotu-captions`` unseen)."""


SOTU = _PACKAGE_DIR / "sotu" / "sotu.jsonl.gz"
DEMO_TEXTS = {
    "sotu": DemoText(source=SOTU, version="v2"),
    # the speeches plus the emoji-scene train captions: a stage-1 LLM that knows the captions' language, so the
    # frozen LLM of the alignment stage can express them (the speeches alone leave it at ~7.5 nats per token)
    "sotu-captions": DemoText(
        source=SOTU,
        version="v6",
        captions_from="demo:emoji-scenes",
        caption_documents=98304,
        tokenizer_demo="demo:sotu",
    ),
    # the same plus documents that state numbers and later repeat them (mm_lightning.demo.recall): text that
    # rewards copying from the context, for the long demo's passkey (a bare 5M LLM passes none of its prompts)
    "sotu-captions-recall": DemoText(
        source=SOTU,
        version="v1",
        captions_from="demo:emoji-scenes",
        caption_documents=98304,
        recall_documents=8192,
        recall=RecallConfig(facts=(1, 2), passage_sentences=(0, 2)),
        tokenizer_demo="demo:sotu",
    ),
}


@dataclass(frozen=True)
class DemoImageText:
    """A generated image-text corpus (emoji scenes) and its sizes."""

    version: str
    """Bumped whenever the generator, the emoji set or the sizes change, so stale caches are not reused."""
    vocab_size: int = 64
    """Distinct emoji in the scenes."""
    train_scenes: int = 4096
    """Scenes in the train split."""
    val_scenes: int = 512
    """Scenes in the val split (compositions never seen in train)."""
    tokenizer_demo: str = "demo:sotu"
    """The text demo whose ``tokenizer.json`` tokenizes the captions (the text stage's vocabulary)."""


DEMO_IMAGE_TEXTS = {"emoji-scenes": DemoImageText(version="v3")}  # v3: emoji of 3-4 cells


def is_demo_name(data_path: str) -> bool:
    """Whether ``data_path`` names a demo corpus (``"demo:<name>"``)."""
    return str(data_path).startswith(DEMO_PREFIX)


def cache_root() -> Path:
    """``$MM_LIGHTNING_CACHE``, or ``~/.cache/mm_lightning``."""
    return Path(os.environ.get("MM_LIGHTNING_CACHE") or "~/.cache/mm_lightning").expanduser()


def _demo(name: str) -> tuple[str, DemoText]:
    short = name[len(DEMO_PREFIX) :] if is_demo_name(name) else name
    if short not in DEMO_TEXTS:
        raise ConfigError(f"Unknown demo {name!r}; available: {', '.join(DEMO_PREFIX + n for n in DEMO_TEXTS)}")
    return short, DEMO_TEXTS[short]


def demo_dir(name: str) -> Path:
    """The cache folder of a demo corpus (which may not be built yet)."""
    short, demo = _demo(name)
    return cache_root() / "demo" / f"{short}-{demo.version}"


def ensure_demo_text(name: str) -> Path:
    """The prepared folder of a demo corpus (``"demo:sotu"`` or ``"sotu"``), built on first use.

    Returns:
        A folder with ``tokenizer.json``, ``train/``, ``val/`` and ``prep_summary.json``.
    """
    _, demo = _demo(name)

    def build(scratch: Path) -> Path:
        inputs = [demo.source]
        if demo.captions_from is not None or demo.recall_documents:
            # the file's name keys the train/val split hash: sotu-captions v6 was built from this name
            inputs = [_write_mixed(demo, scratch / "speeches_and_captions.jsonl")]
        tokenizer = ensure_demo_text(demo.tokenizer_demo) / "tokenizer.json" if demo.tokenizer_demo else None
        prepare_text_shards(
            inputs, scratch / "shards", tokenizer=tokenizer, vocab_size=demo.vocab_size,
            val_fraction=demo.val_fraction, progress=False, chunk_tokens=demo.chunk_tokens,
        )  # fmt: skip
        return scratch / "shards"

    return build_once(demo_dir(name), build)


def read_corpus(path: Path) -> tuple[dict, ...]:
    """The records of a packaged ``.jsonl.gz`` corpus (for ``SOTU``: ``year``, ``name``, ``party``, ``text``)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _write_mixed(demo: DemoText, path: Path) -> Path:
    """The corpus with its added documents spread between its own: train-split scene captions, each a look-up
    document (:func:`lookup_document`), and recall documents (:func:`~mm_lightning.demo.recall.recall_document`).

    Each document is followed by an equal share of the added ones (captions and recall documents alternating), so
    every chunk of the prepared stream, and every batch a run draws from one, holds every kind of text: a captions
    file of its own gave chunks of captions alone, and runs of 8 steps on one kind made the validation loss swing.
    """
    documents = [record["text"] for record in read_corpus(demo.source)]
    added: list[Iterator[str]] = []
    if demo.captions_from is not None:
        config = SceneConfig(vocab_size=_image_demo(demo.captions_from)[1].vocab_size)
        added.append(lookup_document(generate_scene(config, "train", i), i) for i in range(demo.caption_documents))
    if demo.recall_documents:
        sentences, rng = address_sentences(documents), random.Random(f"recall-{demo.version}")
        added.append(recall_document(rng, sentences, demo.recall) for _ in range(demo.recall_documents))
    extra = [doc for group in itertools.zip_longest(*added) for doc in group if doc is not None]
    with open(path, "w", encoding="utf-8") as out:
        for position, document in enumerate(documents):
            share = slice(len(extra) * position // len(documents), len(extra) * (position + 1) // len(documents))
            for text in [document, *extra[share]]:
                out.write(json.dumps({"text": text}) + "\n")
    return path


def lookup_document(scene: Scene, index: int) -> str:
    """A scene's caption after a line listing what it names (background and emoji, in a shuffled order)::

        bee, blue, red apple
        a red apple above a bee on a blue background

    Text that refers back to what came before (as tags before a description, a list before its use, do on the web)
    rewards reading the context: a stage-1 LLM trained on these documents takes the caption's words from the line
    above, and in alignment, with that LLM frozen, the image tokens take the list's place. Plain captions taught the
    LLM to guess captions without reading anything, and alignment then collapsed the vision path to a constant soft
    prompt (image-use gap 0.002 nats per caption token after alignment; with these documents 0.234, and the
    captions name the right background colour 81% of the time, chance 13%).
    """
    words = [scene.background, *(emoji_name(sprite) for sprite in scene.sprites)]
    random.Random(f"lookup-{index}").shuffle(words)
    return ", ".join(words) + "\n" + scene.caption


def _image_demo(name: str) -> tuple[str, DemoImageText]:
    short = name[len(DEMO_PREFIX) :] if is_demo_name(name) else name
    if short not in DEMO_IMAGE_TEXTS:
        available = ", ".join(DEMO_PREFIX + n for n in DEMO_IMAGE_TEXTS)
        raise ConfigError(f"Unknown image-text demo {name!r}; available: {available}")
    return short, DEMO_IMAGE_TEXTS[short]


def image_demo_tokenizer(name: str) -> Path:
    """The ``tokenizer.json`` that tokenizes an image-text demo's captions (its text demo's, built if needed)."""
    _, demo = _image_demo(name)
    return ensure_demo_text(demo.tokenizer_demo) / "tokenizer.json"


def ensure_demo_image_text(name: str) -> Path:
    """The shards of an image-text demo (``"demo:emoji-scenes"``), generated on first use.

    Returns:
        A folder with ``train/``, ``val/`` and ``prep_summary.json`` (the tokenizer: :func:`image_demo_tokenizer`).
    """
    short, demo = _image_demo(name)

    def build(scratch: Path) -> Path:
        scenes = {"train": demo.train_scenes, "val": demo.val_scenes}
        write_scene_shards(SceneConfig(vocab_size=demo.vocab_size), scratch, scenes)
        return scratch

    return build_once(cache_root() / "demo" / f"{short}-{demo.version}", build)


def build_once(target: Path, build: Callable[[Path], Path]) -> Path:
    """``target``, built first unless it holds a ``prep_summary.json`` already.

    Args:
        target: the cache folder of a corpus.
        build: writes the corpus into ``scratch``, a temporary folder next to ``target``, and returns the folder to
            rename into place (``scratch`` or one inside it). The rename is atomic within one filesystem, so an
            interrupted build never leaves a half-written cache; when a concurrent build (another rank) finished
            first, its folder is kept.

    Returns:
        ``target``.
    """
    if (target / "prep_summary.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    try:
        built = build(scratch)
        try:
            os.rename(built, target)
        except OSError:
            if not (target / "prep_summary.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
