"""Synthetic captioned scenes of Noto emoji: a tiny, compositional image-text corpus for CPU demos.

A scene is a canvas of varied size and aspect ratio (sides of 70-140 px by default) in a colour of a small
named palette, holding one to three distinct emoji of two sizes, and a caption that names them, says where
they are and names the background. Everything lies on a grid of 14-px cells, the ViT's patch (``SceneConfig.cell``)::

    "a red apple at the top left on a blue background"          one emoji, one of 3x3 named places
    "a ginger root above a red apple on a pink background"      two, related by above / below / left of / right of
    "a bee, a fish and a bell from left to right on a ..."      three in a row or a column

Every scene is a deterministic function of ``(seed, split, index)``, so the shards can be written by any
number of workers in any order. The validation split tests composition (as in compositional-generalisation
benchmarks such as CLEVR-CoGenT): a stable hash of each scene's *composition* (which emoji in which place or
relation, the background aside) holds out a share of all compositions for validation; train scenes are drawn
only from the rest. Validation therefore uses the same emoji vocabulary in combinations and placements never
seen in training.

The emoji images are the 1,911 base emoji of ``emoji-datasource-google`` 16.0.0 (Noto Emoji, Apache-2.0) in
one 64 px sprite sheet; see ``assets/emoji/PROVENANCE.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import random
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import litdata
from PIL import Image

EMOJI_DIR = Path(__file__).resolve().parent / "assets" / "emoji"
PALETTE = {
    "red": (214, 40, 40),
    "orange": (247, 127, 0),
    "yellow": (252, 211, 77),
    "green": (56, 142, 60),
    "blue": (30, 96, 200),
    "purple": (123, 31, 162),
    "pink": (244, 143, 177),
    "gray": (128, 128, 128),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
PLACES = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
EMOJI_COUNT_WEIGHTS = (0.3, 0.5, 0.2)  # scenes with 1, 2, 3 emoji
SPLITS = ("train", "val")
MIN_EMOJI_CELLS = 3  # 3-4 cells: each emoji covers at least one whole 2x2 block of cells, a merged token (v3)
MAX_NAME_CHARS = 20  # longer names ("white right pointing backhand index") are left out of the vocabulary


@dataclass(frozen=True)
class SceneConfig:
    """What the scene generator draws from."""

    vocab_size: int = 64
    """Distinct emoji used: a fixed, seeded selection of the non-component emoji with short, distinct names."""
    seed: int = 0
    """Seed of the scenes, the vocabulary selection and the held-out compositions."""
    cell: int = 14
    """Side in pixels of the grid every scene is drawn on: canvas sides, emoji sides and emoji corners are whole
    cells, and emoji are 3-4 cells wide. Set to the ViT's patch size (14 for every preset), each emoji fills whole
    patches at one alignment and canvases of at most ``max_patches`` patches reach the ViT unresized, so the tiny
    ViT learns *which* emoji it sees in the minutes the demo gives it (measured in
    ``benchmarks/vit_identity_budget.py``). At 3 cells or more an emoji also covers at least one whole 2 x 2 block
    of patches wherever it sits, the block the projector merges into one LLM token; at 2-3 cells (the scenes
    before v3) most 2-cell emoji fell across four merged tokens, each mostly background, and the demo's captions
    named an emoji half as often (README, Measured)."""
    min_side: int = 70
    """Smallest canvas side in pixels (rounded up to whole cells)."""
    max_side: int = 140
    """Largest canvas side in pixels (rounded down to whole cells): 10 x 10 cells, 100 patches of 14 px."""
    holdout_fraction: float = 0.2
    """Share of all compositions reserved for validation."""


@dataclass(frozen=True)
class Scene:
    """One generated scene: its canvas, emoji boxes and caption."""

    width: int
    height: int
    background: str
    sprites: tuple[int, ...]
    """Sprite indices in the sheet, in caption order."""
    boxes: tuple[tuple[int, int, int], ...]
    """Per emoji ``(x, y, size)``: top-left corner and side in pixels."""
    composition: str
    """The layout and emoji, the background aside: what validation holds out."""
    caption: str


@cache
def load_emoji_meta() -> dict:
    """The packaged ``emoji.json``: sprite size, sheet columns and one entry per sprite."""
    return json.loads((EMOJI_DIR / "emoji.json").read_text(encoding="utf-8"))


@cache
def _sheet() -> Image.Image:
    sheet = Image.open(EMOJI_DIR / "emoji_64.png")
    sheet.load()
    return sheet


def emoji_name(sprite: int) -> str:
    """The lower-cased Unicode name of a sprite (``"red apple"``)."""
    return load_emoji_meta()["emoji"][sprite]["name"].lower()


@cache
def sprite_image(sprite: int) -> Image.Image:
    """The 64x64 RGBA image of sprite ``sprite``."""
    meta = load_emoji_meta()
    size, columns = meta["size"], meta["columns"]
    x, y = (sprite % columns) * size, (sprite // columns) * size
    return _sheet().crop((x, y, x + size, y + size))


@cache
def vocabulary(vocab_size: int, seed: int = 0) -> tuple[int, ...]:
    """A seeded selection of ``vocab_size`` sprites with short, distinct names (skin-tone swatches left out)."""
    candidates, names = [], set()
    for sprite, entry in enumerate(load_emoji_meta()["emoji"]):
        name = entry["name"].lower()
        if entry["category"] != "Component" and len(name) <= MAX_NAME_CHARS and name not in names:
            names.add(name)
            candidates.append(sprite)
    if not 3 <= vocab_size <= len(candidates):
        raise ValueError(f"vocab_size must be in [3, {len(candidates)}], got {vocab_size}")
    random.Random(f"vocab-{seed}").shuffle(candidates)
    return tuple(sorted(candidates[:vocab_size]))


def _unit_hash(*parts: object) -> float:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def is_held_out(composition: str, config: SceneConfig) -> bool:
    """Whether a composition belongs to validation (a stable hash below ``holdout_fraction``)."""
    return _unit_hash("holdout", config.seed, composition) < config.holdout_fraction


def article(noun: str) -> str:
    """``noun`` with its indefinite article: "a cat", "an owl", "a unicorn"."""
    vowel_sound = noun[0] in "aeiou" and not noun.startswith(("eu", "one", "uni", "uru", "usa", "uk", "uz"))
    return f"{'an' if vowel_sound else 'a'} {noun}"


def _draw_composition(rng: random.Random, vocab: tuple[int, ...]) -> tuple[str, tuple[int, ...], str]:
    """``(layout, sprites, phrase)``: a layout (``place-RC``, ``vertical``, ``horizontal``, ``row``, ``column``)."""
    count = rng.choices((1, 2, 3), weights=EMOJI_COUNT_WEIGHTS)[0]
    sprites = tuple(rng.sample(vocab, count))
    names = [article(emoji_name(s)) for s in sprites]
    if count == 1:
        place = rng.choice(list(PLACES))
        return f"place-{place[0]}{place[1]}", sprites, f"{names[0]} {PLACES[place]}"
    if count == 3:
        layout = rng.choice(("row", "column"))
        order = "from left to right" if layout == "row" else "from top to bottom"
        return layout, sprites, f"{names[0]}, {names[1]} and {names[2]} {order}"
    relation = rng.choice(("above", "below", "left of", "right of"))
    layout = "vertical" if relation in ("above", "below") else "horizontal"
    first_is_before = relation in ("above", "left of")  # sprites are stored top/left first
    stored = sprites if first_is_before else sprites[::-1]
    return layout, stored, f"{names[0]} {relation} {names[1]}"


def _canvas_cells(rng: random.Random, config: SceneConfig, layout: str, count: int) -> tuple[int, int]:
    """``(width, height)`` in cells; several emoji lie along the longer side, which holds them at their smallest."""
    low, high = -(-config.min_side // config.cell), config.max_side // config.cell
    width, height = rng.randint(low, high), rng.randint(low, high)
    along_x = layout in ("horizontal", "row")
    if along_x and width < height or layout in ("vertical", "column") and height < width:
        width, height = height, width
    if count > 1:
        need = MIN_EMOJI_CELLS * count
        width, height = (max(width, need), height) if along_x else (width, max(height, need))
    return width, height


def _emoji_cells(rng: random.Random, room: int) -> int:
    """An emoji side in cells: 3 or 4, at most ``room`` (never below 3)."""
    return rng.choice([k for k in (MIN_EMOJI_CELLS, MIN_EMOJI_CELLS + 1) if k <= max(MIN_EMOJI_CELLS, room)])


def _place_single(rng: random.Random, layout: str, width: int, height: int) -> tuple[tuple[int, int, int], ...]:
    """One emoji in cells, in the third of each axis its named place says (its centre drifts by a sixth at most)."""
    row, col = int(layout[-2]), int(layout[-1])
    size = _emoji_cells(rng, min(width, height) // 2)

    def offset(third: int, side: int) -> int:
        slack = side - size
        return min(max(round(third * slack / 2 + rng.uniform(-1, 1) * slack / 6), 0), slack)

    return ((offset(col, width), offset(row, height), size),)


def _place_along(rng: random.Random, count: int, along: int, cross: int) -> list[tuple[int, int, int]]:
    """``count`` boxes ``(along_pos, cross_pos, size)`` in cells, in order along an axis of ``along`` cells."""
    sizes = [_emoji_cells(rng, min(along // count, cross)) for _ in range(count)]
    while sum(sizes) > along:  # three 3-cell emoji on a short side
        sizes[sizes.index(max(sizes))] -= 1
    gaps = [0] * (count + 1)
    for _ in range(along - sum(sizes)):  # the free cells, spread at random before, between and after
        gaps[rng.randrange(count + 1)] += 1
    boxes, pos = [], 0
    for gap, size in zip(gaps, sizes):
        pos += gap
        centred = (cross - size) / 2
        boxes.append((pos, min(max(round(centred + rng.uniform(-0.5, 0.5)), 0), cross - size), size))
        pos += size
    return boxes


def _place(rng: random.Random, layout: str, count: int, width: int, height: int) -> tuple[tuple[int, int, int], ...]:
    if layout.startswith("place-"):
        return _place_single(rng, layout, width, height)
    if layout in ("horizontal", "row"):
        return tuple(_place_along(rng, count, width, height))
    return tuple((x, y, s) for y, x, s in _place_along(rng, count, height, width))


def generate_scene(config: SceneConfig, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split``: a deterministic function of ``(config, split, index)``.

    Compositions are drawn until one falls on the split's side of :func:`is_held_out`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"scene-{config.seed}-{split}-{index}")
    vocab = vocabulary(config.vocab_size, config.seed)
    while True:
        layout, sprites, phrase = _draw_composition(rng, vocab)
        composition = f"{layout}:{','.join(map(str, sprites))}"
        if is_held_out(composition, config) == (split == "val"):
            break
    background = rng.choice(sorted(PALETTE))  # drawn before the geometry: the cell size never changes a caption
    width, height = _canvas_cells(rng, config, layout, len(sprites))
    boxes = _place(rng, layout, len(sprites), width, height)
    cell = config.cell
    boxes = tuple((x * cell, y * cell, size * cell) for x, y, size in boxes)
    caption = f"{phrase} on {article(background)} background"
    return Scene(width * cell, height * cell, background, sprites, boxes, composition, caption)


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    canvas = Image.new("RGB", (scene.width, scene.height), PALETTE[scene.background])
    for sprite, (x, y, size) in zip(scene.sprites, scene.boxes):
        image = sprite_image(sprite).resize((size, size), Image.Resampling.LANCZOS)
        canvas.paste(image, (x, y), image)
    return canvas


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (fast compression: scenes are small and flat)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


class _SceneWriter:
    """The ``litdata.optimize`` function: renders the scenes ``range(start, stop)`` of one split."""

    def __init__(self, config: SceneConfig, split: str):
        self.config, self.split = config, split

    def __call__(self, span: tuple[int, int]):
        for index in range(*span):
            scene = generate_scene(self.config, self.split, index)
            yield {"image": encode_png(render_scene(scene)), "caption": scene.caption}


def write_scene_shards(
    config: SceneConfig, out: str | Path, scenes: dict[str, int], num_workers: int | None = None
) -> dict:
    """Render ``scenes[split]`` scenes per split into litdata shards ``out/{train,val}/`` + ``prep_summary.json``.

    Records are ``{"image": PNG bytes, "caption": str}``, the layout :mod:`mm_lightning.prep.image_text` writes.

    Returns:
        The summary written to ``prep_summary.json``.
    """
    out = Path(out)
    workers = max(1, num_workers or os.cpu_count() or 1)
    start_method = "fork" if sys.platform == "linux" else "spawn"
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        for split in SPLITS:
            step = -(-scenes[split] // workers)
            spans = [(i, min(i + step, scenes[split])) for i in range(0, scenes[split], step)]
            litdata.optimize(
                fn=_SceneWriter(config, split), inputs=spans, output_dir=str(out / split), chunk_bytes="32MB",
                num_workers=min(workers, len(spans)), reorder_files=False, keep_data_ordered=True,
                start_method=start_method, verbose=False,
            )  # fmt: skip
    finally:  # litdata sets the process-wide start method; give the caller's back
        multiprocessing.set_start_method(previous, force=True)
    vocab = vocabulary(config.vocab_size, config.seed)
    summary = {
        "source": "emoji-scenes",
        "config": {k: getattr(config, k) for k in SceneConfig.__dataclass_fields__},
        "splits": {split: {"pairs": scenes[split]} for split in SPLITS},
        "vocabulary": [emoji_name(s) for s in vocab],
    }
    (out / "prep_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
