"""Demo data for the long-context stages, generated from the packaged sources on first use.

Five corpora, each in the layout its data_prep script writes, so the same readers
(:mod:`mm_lightning.data.mixture.long_sources`) serve demo and real data:

- ``demo:motion-clips`` and ``demo:motion-clips-long``: "videos" of emoji scenes in motion (the drawing of
  :mod:`mm_lightning.demo.emoji_scenes`): an emoji moves between named places of the canvas, possibly through
  several of them, sometimes beside another emoji that stays put, and the caption says so ("a cat moves from the
  left to the center, then to the top right while a bell stays at the bottom on a blue background"). Short clips
  have 4-8 frames and one move, long ones 32-64 frames and two or three. Frames are recorded at
  ``MOTION_FPS``. Validation holds out compositions as the scenes do.
- ``demo:long-docs``: State of the Union addresses typeset into page images (PIL's default font) with each
  page's text, like rendered PDFs.
- ``demo:scene-docs``: interleaved documents: a few scenes, each followed by its caption and a passage of an
  address.
- ``demo:long-text``: whole addresses, one document each.

Addresses are split between train and val by a stable hash of their number, the same in every corpus. Everything
is a deterministic function of the recipe (``LongDemo``) and is built into ``$MM_LIGHTNING_CACHE/demo/<name>-<version>``
the way :mod:`mm_lightning.demo.corpora` builds its corpora (a temporary folder renamed into place).
"""

from __future__ import annotations

import json
import random
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from litdata.streaming.writer import BinaryWriter
from PIL import Image, ImageDraw, ImageFont

from mm_lightning.demo.corpora import DEMO_PREFIX, SOTU, build_once, cache_root, read_corpus
from mm_lightning.demo.emoji_scenes import (
    PALETTE,
    PLACES,
    SPLITS,
    SceneConfig,
    article,
    emoji_name,
    generate_scene,
    is_held_out,
    render_scene,
    sprite_image,
    vocabulary,
)
from mm_lightning.errors import ConfigError
from mm_lightning.media.images import encode_image
from mm_lightning.media.interleave import pack_blobs
from mm_lightning.prep.text import split_of

MOTION_FPS = 4.0  # frames per second the demo clips are "recorded" at
PLACE_NAMES = {place: phrase.split(" ", 1)[1] for place, phrase in PLACES.items()}  # "at the top" -> "the top"
ADDRESS_VAL_FRACTION = 0.05


@dataclass(frozen=True)
class LongDemo:
    """One long-context demo corpus: its kind, version and sizes."""

    kind: str
    """``motion``, ``pages``, ``scene-docs`` or ``text``."""
    version: str
    """Bumped whenever the generator or sizes change, so stale caches are not reused."""
    train: int
    """Items in the train split (for addresses: at most this many train addresses)."""
    val: int
    """Items in the val split."""
    frames: tuple[int, int] = (4, 8)
    """Smallest and largest frame count of a clip."""
    moves: tuple[int, int] = (1, 1)
    """Fewest and most moves of a clip's emoji."""
    max_pages: int = 6
    """Pages per typeset document."""


LONG_DEMOS = {
    "motion-clips": LongDemo("motion", "v1", train=512, val=64, frames=(4, 8), moves=(1, 1)),
    "motion-clips-long": LongDemo("motion", "v1", train=48, val=8, frames=(32, 64), moves=(2, 3)),
    "long-docs": LongDemo("pages", "v1", train=40, val=6, max_pages=6),
    "scene-docs": LongDemo("scene-docs", "v3", train=256, val=32),  # v3: the scenes' v3
    "long-text": LongDemo("text", "v1", train=233, val=233),
}


# --- emoji in motion --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionClip:
    """One generated clip: a moving emoji along named places, an optional still one, and the caption."""

    width: int
    height: int
    background: str
    sprite: int
    path: tuple[tuple[int, int], ...]
    """The places the moving emoji visits, in order (grid cells of :data:`PLACES`)."""
    still: tuple[int, tuple[int, int]] | None
    """``(sprite, place)`` of an emoji that stays put, or None."""
    num_frames: int
    caption: str


def _motion_phrase(name: str, path: tuple[tuple[int, int], ...]) -> str:
    moves = [f"to {PLACE_NAMES[place]}" for place in path[2:]]
    first = f"{article(name)} moves from {PLACE_NAMES[path[0]]} to {PLACE_NAMES[path[1]]}"
    return ", then ".join([first, *moves])


def generate_motion_clip(config: SceneConfig, split: str, index: int, demo: LongDemo) -> MotionClip:
    """Clip ``index`` of ``split``: a deterministic function of its arguments; val holds out compositions."""
    rng = random.Random(f"motion-{config.seed}-{split}-{index}-{demo.frames}-{demo.moves}")
    vocab = vocabulary(config.vocab_size, config.seed)
    while True:
        sprite, path = rng.choice(vocab), [rng.choice(list(PLACES))]
        for _ in range(rng.randint(*demo.moves)):
            path.append(rng.choice([p for p in PLACES if p != path[-1]]))
        if is_held_out(f"motion:{sprite}:{path}", config) == (split == "val"):
            break
    still = None
    if rng.random() < 0.4:
        still = (rng.choice([s for s in vocab if s != sprite]), rng.choice([p for p in PLACES if p not in path]))
    side = rng.randrange(64, 97, 8)
    background = rng.choice(sorted(PALETTE))
    caption = _motion_phrase(emoji_name(sprite), tuple(path))
    if still is not None:
        caption += f" while {article(emoji_name(still[0]))} stays {PLACES[still[1]]}"
    caption += f" on {article(background)} background"
    return MotionClip(side, side, background, sprite, tuple(path), still, rng.randint(*demo.frames), caption)


def _cell_centre(place: tuple[int, int], width: int, height: int) -> tuple[float, float]:
    return (place[1] + 0.5) * width / 3, (place[0] + 0.5) * height / 3


def render_motion_frames(clip: MotionClip) -> list[Image.Image]:
    """The clip's frames: the emoji glides along its path at constant speed per move, first to last frame."""
    size = int(0.8 * min(clip.width, clip.height) / 3)
    moving = sprite_image(clip.sprite).resize((size, size), Image.Resampling.LANCZOS)
    base = Image.new("RGB", (clip.width, clip.height), PALETTE[clip.background])
    if clip.still is not None:
        still = sprite_image(clip.still[0]).resize((size, size), Image.Resampling.LANCZOS)
        x, y = _cell_centre(clip.still[1], clip.width, clip.height)
        base.paste(still, (int(x - size / 2), int(y - size / 2)), still)
    moves, frames = len(clip.path) - 1, []
    for f in range(clip.num_frames):
        progress = moves * f / max(1, clip.num_frames - 1)  # in moves
        step = min(int(progress), moves - 1)
        (x0, y0), (x1, y1) = (_cell_centre(p, clip.width, clip.height) for p in clip.path[step : step + 2])
        t = progress - step
        frame = base.copy()
        frame.paste(moving, (int(x0 + t * (x1 - x0) - size / 2), int(y0 + t * (y1 - y0) - size / 2)), moving)
        frames.append(frame)
    return frames


def render_number_frame(width: int, height: int, background: str, number: str) -> Image.Image:
    """A frame showing ``number`` in large digits (the needle of the video passkey test)."""
    frame = Image.new("RGB", (width, height), PALETTE[background])
    draw = ImageDraw.Draw(frame)
    font = ImageFont.load_default(size=max(12, int(min(width, height) * 0.9 / max(1, len(number)) * 1.6)))
    ink = (255, 255, 255) if sum(PALETTE[background]) < 384 else (0, 0, 0)
    draw.text((width / 2, height / 2), number, fill=ink, font=font, anchor="mm")
    return frame


def _motion_records(demo: LongDemo, split: str, count: int) -> Iterator[dict]:
    config = SceneConfig()
    for index in range(count):
        clip = generate_motion_clip(config, split, index, demo)
        frames = render_motion_frames(clip)
        yield {
            "frames": pack_blobs([encode_image(frame) for frame in frames]),
            "timestamps": json.dumps([round(i / MOTION_FPS, 3) for i in range(len(frames))]),
            "caption": clip.caption,
            "source": f"motion/{split}/{index}",
        }


# --- addresses as text, pages and interleaved documents ---------------------------------------------------------


@cache
def load_addresses() -> tuple[dict, ...]:
    """The packaged State of the Union addresses (``year``, ``name``, ``party``, ``text``)."""
    return read_corpus(SOTU)


def addresses_of(split: str) -> list[int]:
    """Indices of the addresses in ``split`` (a stable hash of the index; the same in every corpus)."""
    return [i for i in range(len(load_addresses())) if split_of("sotu", i, ADDRESS_VAL_FRACTION) == split]


def address_title(address: dict) -> str:
    """``"State of the Union address, 1790, George Washington"``."""
    return f"State of the Union address, {address['year']}, {address['name']}"


PAGE_SIZE, PAGE_MARGIN, LINE_HEIGHT, LINE_CHARS, PAGE_LINES = (320, 416), 12, 12, 58, 32


def typeset_pages(text: str, max_pages: int) -> list[tuple[Image.Image, str]]:
    """``text`` typeset into at most ``max_pages`` grayscale pages (PIL's default font), each with its text."""
    lines = [line for paragraph in text.split("\n") for line in textwrap.wrap(paragraph, LINE_CHARS) or [""]]
    font = ImageFont.load_default()
    pages = []
    for start in range(0, min(len(lines), max_pages * PAGE_LINES), PAGE_LINES):
        page_lines = lines[start : start + PAGE_LINES]
        image = Image.new("L", PAGE_SIZE, 255)
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(page_lines):
            draw.text((PAGE_MARGIN, PAGE_MARGIN + row * LINE_HEIGHT), line, fill=0, font=font)
        pages.append((image, " ".join(page_lines)))
    return pages


def _page_records(demo: LongDemo, split: str, count: int) -> Iterator[dict]:
    for index in addresses_of(split)[:count]:
        address = load_addresses()[index]
        pages = typeset_pages(address["text"], demo.max_pages)
        yield {
            "images": pack_blobs([encode_image(image) for image, _ in pages]),
            "texts": json.dumps([address_title(address), *(text for _, text in pages)]),
            "source": f"sotu/{index}",
        }


def _scene_doc_records(demo: LongDemo, split: str, count: int) -> Iterator[dict]:
    config, addresses = SceneConfig(), addresses_of(split)
    for index in range(count):
        rng = random.Random(f"scene-doc-{split}-{index}")
        address = load_addresses()[rng.choice(addresses)]
        sentences = address["text"].replace("\n", " ").split(". ")
        scenes = [generate_scene(config, split, 1_000_000 + index * 8 + k) for k in range(rng.randint(2, 4))]
        texts = [address_title(address) + "."]
        for number, scene in enumerate(scenes, start=1):
            start = rng.randrange(max(1, len(sentences) - 3))
            passage = ". ".join(sentences[start : start + rng.randint(1, 3)]).strip()
            texts.append(f"Figure {number}: {scene.caption}. {passage}.")
        yield {
            "images": pack_blobs([encode_image(render_scene(scene)) for scene in scenes]),
            "texts": json.dumps(texts),
            "source": f"scene-docs/{split}/{index}",
        }


def _text_records(demo: LongDemo, split: str, count: int) -> Iterator[dict]:
    for index in addresses_of(split)[:count]:
        address = load_addresses()[index]
        yield {"text": f"{address_title(address)}\n\n{address['text']}", "source": f"sotu/{index}"}


_RECORDS: dict[str, Callable[[LongDemo, str, int], Iterator[dict]]] = {
    "motion": _motion_records,
    "pages": _page_records,
    "scene-docs": _scene_doc_records,
    "text": _text_records,
}


# --- building the cache -----------------------------------------------------------------------------------------


def long_demo(name: str) -> tuple[str, LongDemo]:
    """``(short name, recipe)`` of ``"demo:<name>"`` or ``"<name>"``; :class:`ConfigError` when unknown."""
    short = name[len(DEMO_PREFIX) :] if name.startswith(DEMO_PREFIX) else name
    if short not in LONG_DEMOS:
        raise ConfigError(f"Unknown long demo {name!r}; available: {', '.join(DEMO_PREFIX + n for n in LONG_DEMOS)}")
    return short, LONG_DEMOS[short]


def ensure_long_demo(name: str) -> Path:
    """The folder of a long-context demo (``train/``, ``val/``, ``prep_summary.json``), built on first use."""
    short, demo = long_demo(name)
    target = cache_root() / "demo" / f"{short}-{demo.version}"
    return build_once(target, lambda scratch: _write_demo(short, demo, scratch))


def _write_demo(short: str, demo: LongDemo, out: Path) -> Path:
    counts = {}
    for split in SPLITS:
        writer = BinaryWriter(str(out / split), chunk_bytes="8MB")
        counts[split] = 0
        for record in _RECORDS[demo.kind](demo, split, demo.train if split == "train" else demo.val):
            writer.add_item(counts[split], record)
            counts[split] += 1
        writer.done()
        writer.merge(1)
    summary = {"source": f"demo:{short}", "kind": demo.kind, "version": demo.version, "splits": counts}
    (out / "prep_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out
