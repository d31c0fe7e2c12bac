"""Rebuild the packaged emoji set ``mm_lightning/demo/assets/emoji/`` from its npm source.

The emoji are the 1,911 base emoji (no skin-tone variations) of the npm package
``emoji-datasource-google@16.0.0`` (Noto Emoji art, Apache-2.0; see ``mm_lightning/demo/assets/emoji/``):
each one's 64x64 RGBA image ``package/img/google/64/<image>`` pasted, in ``sort_order``, into one sprite sheet of
``COLUMNS`` columns (``emoji_64.png``), and its metadata in ``emoji.json`` (``{"size", "columns", "emoji": [...]}``,
one entry per sprite: name, short name, category, subcategory, code points).

Usage::

    python data_prep/fetch_emoji_demo.py --output-dir /tmp/emoji --check mm_lightning/demo/assets/emoji

``npm pack`` needs network access to the npm registry; ``--tarball`` uses an already downloaded package. The
sheet's pixels and ``emoji.json`` are reproduced exactly; the PNG bytes themselves depend on the zlib build,
so ``--check`` compares decoded pixels (and the sha256 recorded in PROVENANCE.md is of the pixels too).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

PACKAGE = "emoji-datasource-google@16.0.0"
TARBALL_SHA1 = "a80ac3e8106cbd4d8648ce758aa099e8827b6157"  # `npm view emoji-datasource-google@16.0.0 dist.shasum`
SIZE = 64
COLUMNS = 44  # 44 x 44 = 1,936 slots for 1,911 emoji
KEYS = ("name", "short_name", "category", "subcategory", "unified")
SHEET_NAME, META_NAME = "emoji_64.png", "emoji.json"


def npm_pack(workdir: Path) -> Path:
    """Download the package tarball with ``npm pack`` into ``workdir``."""
    result = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {PACKAGE} failed:\n{result.stderr}")
    return workdir / result.stdout.strip().splitlines()[-1]


def read_package(tarball: Path) -> tuple[list[dict], dict[str, bytes]]:
    """The base emoji of ``emoji.json`` in ``sort_order`` and the bytes of their 64 px Google images."""
    digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA1:
        raise RuntimeError(f"{tarball}: sha1 {digest}, expected {TARBALL_SHA1} for {PACKAGE}")
    folder, files = f"package/img/google/{SIZE}/", {}
    with tarfile.open(tarball, "r:gz") as tar:  # one sequential pass (seeking back in a .tgz re-reads it)
        for member in tar:
            if member.isfile() and (member.name == "package/emoji.json" or member.name.startswith(folder)):
                files[member.name.removeprefix(folder)] = tar.extractfile(member).read()
    emoji = json.loads(files["package/emoji.json"].decode("utf-8"))
    emoji = sorted((e for e in emoji if e["has_img_google"]), key=lambda e: e["sort_order"])
    return emoji, {e["image"]: files[e["image"]] for e in emoji}


def build_sheet(emoji: list[dict], images: dict[str, bytes]) -> Image.Image:
    """One RGBA sheet: sprite ``i`` at column ``i % COLUMNS``, row ``i // COLUMNS``; empty slots transparent."""
    rows = -(-len(emoji) // COLUMNS)
    sheet = Image.new("RGBA", (COLUMNS * SIZE, rows * SIZE), (0, 0, 0, 0))
    for i, entry in enumerate(emoji):
        sprite = Image.open(io.BytesIO(images[entry["image"]])).convert("RGBA")
        if sprite.size != (SIZE, SIZE):
            raise RuntimeError(f"{entry['image']}: {sprite.size}, expected {SIZE}x{SIZE}")
        sheet.paste(sprite, ((i % COLUMNS) * SIZE, (i // COLUMNS) * SIZE))
    return sheet


def build_metadata(emoji: list[dict]) -> bytes:
    """``emoji.json``: sprite size, sheet columns and one entry per sprite, in sheet order."""
    entries = [{key: e[key] for key in KEYS} for e in emoji]
    head = json.dumps({"source": PACKAGE, "size": SIZE, "columns": COLUMNS})[:-1]
    lines = ",\n".join(" " + json.dumps(entry, ensure_ascii=False) for entry in entries)
    return f'{head}, "emoji": [\n{lines}\n]}}\n'.encode()  # one sprite per line


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of the decoded RGBA pixels (independent of the PNG encoder)."""
    return hashlib.sha256(image.convert("RGBA").tobytes()).hexdigest()


def compare(out_dir: Path, reference: Path) -> bool:
    """Whether ``out_dir`` holds the same metadata and sheet pixels as ``reference``; prints the verdict."""
    same_meta = (out_dir / META_NAME).read_bytes() == (reference / META_NAME).read_bytes()
    same_pixels = pixel_sha256(Image.open(out_dir / SHEET_NAME)) == pixel_sha256(Image.open(reference / SHEET_NAME))
    print(f"{META_NAME}: {'identical' if same_meta else 'DIFFERENT'}; {SHEET_NAME} pixels: "
          f"{'identical' if same_pixels else 'DIFFERENT'} (compared with {reference})")  # fmt: skip
    return same_meta and same_pixels


def main(argv: list[str] | None = None) -> int:
    """Fetch, build, write, and optionally compare with the committed files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="emoji", help="where to write emoji_64.png and emoji.json")
    parser.add_argument("--tarball", default=None, help="an already downloaded package .tgz (skips npm pack)")
    parser.add_argument("--check", default=None, help="compare the output with this folder (pixels and metadata)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        tarball = Path(args.tarball) if args.tarball else npm_pack(Path(workdir))
        emoji, images = read_package(tarball)
    sheet = build_sheet(emoji, images)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sheet.save(out / SHEET_NAME, "PNG", optimize=True)
    (out / META_NAME).write_bytes(build_metadata(emoji))
    print(
        f"wrote {out}: {len(emoji)} emoji, sheet {sheet.size[0]}x{sheet.size[1]}, pixels sha256 {pixel_sha256(sheet)}"
    )
    return 0 if args.check is None or compare(out, Path(args.check)) else 1


if __name__ == "__main__":
    sys.exit(main())
