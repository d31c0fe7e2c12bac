"""Image-text data preparation: the three input layouts, bad pairs skipped and counted, round trips, the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litdata import StreamingDataset
from PIL import Image

from mm_lightning.prep.image_text import ImagePrepError, prepare_image_text_shards

REPO = Path(__file__).resolve().parents[2]


def make_image(width: int, height: int, fmt: str, seed: int) -> bytes:
    """An image with a gradient (so resizing and re-encoding are visible in the pixels)."""
    image = Image.new("RGB", (width, height))
    pixels = [((x * 7 + seed * 40) % 256, (y * 5) % 256, seed * 30 % 256) for y in range(height) for x in range(width)]
    image.putdata(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


GOOD = {  # name -> (bytes, caption)
    f"img{i}.{ext}": (make_image(w, h, fmt, i), f"caption number {i} of a {w}x{h} image")
    for i, (w, h, fmt, ext) in enumerate(
        [(40, 30, "PNG", "png"), (33, 51, "JPEG", "jpg"), (64, 64, "WEBP", "webp"), (90, 20, "PNG", "png"),
         (600, 150, "PNG", "png"), (20, 700, "JPEG", "jpeg"), (48, 48, "BMP", "png"), (17, 23, "PNG", "png")]
    )
}  # fmt: skip
TRUNCATED_JPEG = make_image(64, 64, "JPEG", 3)[:300]
NOT_AN_IMAGE = b"this is not a png at all"


def write_caption_folder(root: Path, as_csv: bool = False) -> None:
    """Images under ``root/images`` and a captions file with the good pairs and four bad ones."""
    (root / "images").mkdir(parents=True)
    rows = []
    for name, (data, caption) in GOOD.items():
        (root / "images" / name).write_bytes(data)
        rows.append({"image": f"images/{name}", "caption": caption})
    (root / "images" / "truncated.jpg").write_bytes(TRUNCATED_JPEG)
    (root / "images" / "fake.png").write_bytes(NOT_AN_IMAGE)
    rows += [
        {"image": "images/truncated.jpg", "caption": "a truncated jpeg"},
        {"image": "images/fake.png", "caption": "not an image"},
        {"image": "images/img0.png", "caption": "   "},
        {"image": "images/missing.png", "caption": "no such file"},
    ]
    if as_csv:
        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")


def read_split(split_dir: Path) -> list[dict]:
    """Every record of a written split."""
    dataset = StreamingDataset(str(split_dir))
    return [dataset[i] for i in range(len(dataset))]


def check_round_trip(out: Path, expected: dict[str, tuple[bytes, str]], max_side: int) -> None:
    """Every good pair is in train or val exactly once, with its image unchanged or resized to ``max_side``."""
    records = read_split(out / "train") + read_split(out / "val")
    by_caption = {r["caption"]: r["image"] for r in records}
    assert sorted(by_caption) == sorted(c for _, c in expected.values()) and len(records) == len(expected)
    for data, caption in expected.values():
        original, stored = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(by_caption[caption]))
        if max(original.size) <= max_side and original.format in ("PNG", "JPEG", "WEBP"):
            assert by_caption[caption] == data  # stored as is
            continue
        scale = min(1.0, max_side / max(original.size))
        assert stored.size == tuple(max(1, round(s * scale)) for s in original.size)
        assert stored.format == ("JPEG" if original.format == "JPEG" else "PNG")
        if scale == 1.0:  # re-encoded from another format, losslessly
            assert stored.convert("RGB").tobytes() == original.convert("RGB").tobytes()


def test_caption_folder_skips_and_counts_bad_pairs(tmp_path: Path) -> None:
    write_caption_folder(tmp_path / "raw")
    messages: list[str] = []
    summary = prepare_image_text_shards(
        [tmp_path / "raw"], tmp_path / "out", max_side=128, val_fraction=0.3, num_workers=1, progress=False,
        report=messages.append,
    )  # fmt: skip
    assert summary["pairs"] == len(GOOD)
    assert summary["skipped"] == {"bad_image": 2, "empty_caption": 1, "malformed": 1, "missing_image": 1}
    assert all(summary["splits"][s]["pairs"] >= 1 for s in ("train", "val"))
    assert sum(s["resized"] for s in summary["splits"].values()) == 2
    assert any("missing.png" in m for m in messages) and any("fake.png" in m for m in messages)
    assert any("truncated.jpg" in m and "undecodable or truncated" in m for m in messages)
    assert json.loads((tmp_path / "out" / "prep_summary.json").read_text()) == summary
    check_round_trip(tmp_path / "out", GOOD, max_side=128)
    with pytest.raises(ImagePrepError, match="already holds prepared data"):
        prepare_image_text_shards([tmp_path / "raw"], tmp_path / "out", progress=False)


def write_webdataset(path: Path, items: dict[str, tuple[bytes, str]], use_json: bool) -> None:
    """An img2dataset-style tar: ``KEY.<ext>`` with ``KEY.txt`` or ``KEY.json`` per sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (name, (data, caption)) in enumerate(items.items()):
            side = json.dumps({"caption": caption, "key": f"{i:09d}"}) if use_json else caption
            members = {
                f"{i:09d}.{name.split('.')[-1]}": data,
                f"{i:09d}.{'json' if use_json else 'txt'}": side.encode(),
            }
            for member, payload in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_csv_webdataset_and_parquet_inputs(tmp_path: Path) -> None:
    names = list(GOOD)
    tar_pairs = {f"tar-{n}": (data, f"tar: {caption}") for n, (data, caption) in GOOD.items()}
    write_caption_folder(tmp_path / "csv", as_csv=True)
    write_webdataset(tmp_path / "tars" / "00000.tar", dict(list(tar_pairs.items())[:4]), use_json=False)
    write_webdataset(tmp_path / "tars" / "00001.tar", dict(list(tar_pairs.items())[4:]), use_json=True)
    summary = prepare_image_text_shards(
        [tmp_path / "csv", tmp_path / "tars"], tmp_path / "out", max_side=512, num_workers=2, progress=False,
        report=lambda _: None,
    )  # fmt: skip
    assert summary["files"] == 3
    assert summary["skipped"] == {"bad_image": 2, "empty_caption": 1, "missing_image": 1}
    check_round_trip(tmp_path / "out", GOOD | tar_pairs, max_side=512)

    (tmp_path / "pq").mkdir()
    table = {"jpg": [GOOD[n][0] for n in names], "txt": [f"parquet: {GOOD[n][1]}" for n in names]}
    pq.write_table(pa.table(table), tmp_path / "pq" / "pairs.parquet")
    pq.write_table(pa.table({"url": ["x"], "txt": ["meta"]}), tmp_path / "pq" / "00000.parquet")  # no image column
    summary = prepare_image_text_shards(
        [tmp_path / "pq"], tmp_path / "out_pq", image_field="jpg", caption_field="txt", max_side=512,
        num_workers=1, progress=False, report=lambda _: None,
    )  # fmt: skip
    assert summary["skipped"] == {"unreadable_file": 1}  # img2dataset's metadata parquet, reported once
    check_round_trip(tmp_path / "out_pq", {n: (d, f"parquet: {c}") for n, (d, c) in GOOD.items()}, 512)


def test_no_usable_pairs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "bad.png").write_bytes(NOT_AN_IMAGE)
    (tmp_path / "raw" / "captions.jsonl").write_text(json.dumps({"image": "bad.png", "caption": "x"}) + "\n")
    with pytest.raises(ImagePrepError, match="no usable pairs"):
        prepare_image_text_shards([tmp_path / "raw"], tmp_path / "out", num_workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_strict_fails_cleanly(tmp_path: Path) -> None:
    write_caption_folder(tmp_path / "raw")
    script = REPO / "data_prep" / "prepare_image_text.py"
    command = [sys.executable, str(script), str(tmp_path / "raw"), "-o", str(tmp_path / "out"), "--quiet"]
    result = subprocess.run([*command, "--strict"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_image_text.py: error: ") and "--strict" in lines[0]
    assert not (tmp_path / "out").exists()
