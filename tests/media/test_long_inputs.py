"""Long inputs: frame sampling, video decoding, PDF rendering, their prep scripts and the long-context demos."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from mm_lightning.media.interleave import pack_blobs, unpack_blobs
from mm_lightning.media.video import FrameSampling, MissingExtraError, build_video_sample, sample_indices, sample_times
from mm_lightning.tokenizer import IMAGE_SPAN, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok():
    texts = ["a cat moves from the left to the right on a blue background", "page one text", "hello world"] * 5
    return train_bpe_tokenizer(texts, vocab_size=300)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_video(path: Path, frames: int = 20, rate: int = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """An mpeg4 clip whose red channel encodes the frame number."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[..., 0] = i * 12
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_text_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal PDF with one line of Helvetica text per page (a real text layer)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 18 Tf 20 100 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 160] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")  # fmt: skip
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


# --- frame sampling --------------------------------------------------------------------------------------------


def test_sample_times_follow_the_rate_then_the_cap():
    assert sample_times(3.0, 2.0, 64) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert sample_times(0.1, 1.0, 8) == [0.0]  # at least one frame
    capped = sample_times(100.0, 1.0, 4)  # 100 frames at 1 fps > cap: uniform over the whole clip
    assert capped == [12.5, 37.5, 62.5, 87.5]


def test_sample_indices_never_repeat_or_exceed_the_clip():
    assert sample_indices(30, 10.0, 2.0, 64) == [0, 5, 10, 15, 20, 25]
    assert sample_indices(5, 4.0, 100.0, 64) == [0, 1, 2, 3, 4]  # faster than the clip: every frame once
    uniform = sample_indices(64, 4.0, 4.0, 8)
    assert len(uniform) == 8 and uniform[0] > 0 and uniform[-1] < 63
    with pytest.raises(ValueError):
        FrameSampling(fps=0)


def test_video_sample_caps_patches_per_frame_and_lays_out_tokens(tok):
    frames = [Image.new("RGB", (320, 240), (i * 40, 0, 0)) for i in range(3)]
    sample = build_video_sample(frames, "a cat moves", tok, patch_size=14, max_patches_per_frame=20, prompt="Q:")
    assert len(sample.images) == 3
    for patches, (h, w) in sample.images:
        assert h * w <= 20 and patches.shape == (h * w, 3 * 14 * 14)
        assert w > h  # aspect ratio kept
    assert sample.token_ids[:9] == list(IMAGE_SPAN) * 3 and sample.token_ids[-1] == 0
    assert len(sample.loss_mask) == len(sample.token_ids) and sample.loss_mask.count(False) == len(tok.encode("Q:").ids)


# --- decoding ---------------------------------------------------------------------------------------------------


def test_decode_video_written_with_pyav(tmp_path):
    pytest.importorskip("av")
    from mm_lightning.media.video import VideoDecodeError, decode_video

    path = write_video(tmp_path / "clip.mp4", frames=20, rate=10)  # 2 s
    frames, stamps = decode_video(path, FrameSampling(fps=2, max_frames=64))
    assert stamps == [0.0, 0.5, 1.0, 1.5] and frames[0].size == (64, 48)
    reds = [frame.getpixel((32, 24))[0] for frame in frames]
    assert reds == sorted(reds) and reds[1] - reds[0] > 30  # frames 0, 5, 10, 15 (red = 12 * frame)
    frames, stamps = decode_video(path.read_bytes(), FrameSampling(fps=30, max_frames=4, max_side=32))
    assert len(frames) == 4 and max(frames[0].size) == 32 and 0.0 < stamps[0] < stamps[-1] < 2.0
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 64)
    with pytest.raises(VideoDecodeError):
        decode_video(tmp_path / "bad.mp4", FrameSampling())


def test_missing_extras_name_the_extra(monkeypatch):
    from mm_lightning.media.documents import import_pdfium
    from mm_lightning.media.video import import_av

    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    with pytest.raises(MissingExtraError, match=r"mm_lightning\[video\]"):
        import_av()
    with pytest.raises(MissingExtraError, match=r"mm_lightning\[docs\]"):
        import_pdfium()


def test_pdf_pages_render_with_their_text(tmp_path, tok):
    pytest.importorskip("pypdfium2")
    from mm_lightning.media.documents import DocumentDecodeError, build_document_sample, render_pdf

    path = write_text_pdf(tmp_path / "doc.pdf", ["first page", "second page", "third page"])
    pages = render_pdf(path, dpi=144, max_pages=2)
    assert [page.text for page in pages] == ["first page", "second page"]
    assert pages[0].image.size == (400, 320) and pages[0].image.getextrema()[0][0] < 100  # dark text was drawn
    sample = build_document_sample(pages, tok, title="doc", max_patches_per_page=30)
    assert sample.token_ids.count(2) == 2 and len(sample.images) == 2
    first = sample.token_ids.index(3)
    assert tok.decode(sample.token_ids[first + 3 : sample.token_ids.index(3, first + 1)]) == "first page"
    image_pdf = tmp_path / "scan.pdf"  # PIL writes image-only PDFs: pages without a text layer
    Image.new("RGB", (100, 80), "white").save(image_pdf, save_all=True, append_images=[Image.new("RGB", (80, 100))])
    assert [p.text for p in render_pdf(image_pdf)] == ["", ""]
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    with pytest.raises(DocumentDecodeError):
        render_pdf(tmp_path / "bad.pdf")


# --- prep scripts -----------------------------------------------------------------------------------------------


def test_prepare_video_skips_and_counts_bad_clips(tmp_path, capsys):
    pytest.importorskip("av")
    from litdata import StreamingDataset

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b", "c"):
        write_video(videos / f"{name}.mp4", frames=12, rate=4)
    (videos / "corrupt.mp4").write_bytes((videos / "a.mp4").read_bytes()[:200])
    rows = [{"video": f"{n}.mp4", "caption": f"clip {n}"} for n in ("a", "b", "corrupt", "missing", "c")]
    (videos / "captions.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{broken\n")
    main = _script("prepare_video").main
    out = tmp_path / "out"
    assert main([str(videos), "-o", str(out), "--fps", "1", "--max-frames", "2", "--quiet", "--num-workers", "1"]) == 0
    summary = json.loads((out / "prep_summary.json").read_text())
    assert summary["clips"] == 3 and summary["skipped"] == {"bad_video": 1, "malformed": 1, "missing_video": 1}
    err = capsys.readouterr().err
    assert f"{videos / 'captions.jsonl'}:3 (corrupt.mp4): undecodable or corrupt video" in err
    record = StreamingDataset(str(out / "train"))[0]
    assert len(unpack_blobs(record["frames"])) == 2 and json.loads(record["timestamps"]) == [0.75, 2.25]
    assert main([str(videos), "-o", str(tmp_path / "strict"), "--strict", "--quiet", "--num-workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("prepare_video.py: error: ") and "corrupt.mp4" in err and "--strict" in err and "\n" not in err
    )
    assert not (tmp_path / "strict").exists()


def test_prepare_docs_skips_corrupt_pdfs_and_refuses_empty_input(tmp_path, capsys):
    pytest.importorskip("pypdfium2")
    from mm_lightning.data.mixture.long_sources import open_long_source

    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name in ("one", "two"):
        write_text_pdf(pdfs / f"{name}.pdf", [f"{name} page", "more"])
    (pdfs / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    main = _script("prepare_docs").main
    out = tmp_path / "docs"
    assert main([str(pdfs), "-o", str(out), "--quiet", "--num-workers", "1"]) == 0
    assert json.loads((out / "prep_summary.json").read_text())["skipped"] == {"bad_pdf": 1}
    assert "broken.pdf: unreadable or corrupt PDF" in capsys.readouterr().err
    source = open_long_source(str(out), train_bpe_tokenizer(["one page more"], 270), "train")
    assert len(source) == 1 and len(source.sample(0).images) == 2
    assert main([str(pdfs), "-o", str(out), "--quiet", "--num-workers", "1"]) == 2  # occupied output
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"prepare_docs.py: error: No .pdf files found in: {empty}"
    (empty / "bad.pdf").write_bytes(b"nope")
    assert main([str(empty), "-o", str(tmp_path / "x"), "--quiet", "--num-workers", "1"]) == 2
    assert "no usable documents" in capsys.readouterr().err


# --- demos ------------------------------------------------------------------------------------------------------


def test_motion_clips_are_deterministic_and_captions_describe_the_motion():
    from mm_lightning.demo.emoji_scenes import SceneConfig, emoji_name
    from mm_lightning.demo.long import LONG_DEMOS, PLACE_NAMES, generate_motion_clip, render_motion_frames

    config, demo = SceneConfig(), LONG_DEMOS["motion-clips-long"]
    clip = generate_motion_clip(config, "train", 3, demo)
    assert clip == generate_motion_clip(config, "train", 3, demo)
    assert 32 <= clip.num_frames <= 64 and 3 <= len(clip.path) <= 4
    assert f"{emoji_name(clip.sprite)} moves from {PLACE_NAMES[clip.path[0]]} to {PLACE_NAMES[clip.path[1]]}" in (
        clip.caption
    )
    assert f"then to {PLACE_NAMES[clip.path[-1]]}" in clip.caption and clip.caption.endswith("background")
    frames = render_motion_frames(clip)
    assert len(frames) == clip.num_frames and frames[0].size == (clip.width, clip.height)
    assert frames[0].tobytes() != frames[-1].tobytes()  # it moved
    assert [f.tobytes() for f in frames] == [f.tobytes() for f in render_motion_frames(clip)]
    short = generate_motion_clip(config, "val", 0, LONG_DEMOS["motion-clips"])
    assert 4 <= short.num_frames <= 8 and " moves from " in short.caption and ", then" not in short.caption


def test_long_demos_build_into_the_cache_and_read_as_samples(tmp_path, monkeypatch, tok):
    from mm_lightning.data.mixture.long_sources import open_long_source
    from mm_lightning.demo import long as long_demo

    monkeypatch.setenv("MM_LIGHTNING_CACHE", str(tmp_path))
    tiny = {name: long_demo.LongDemo(**{**demo.__dict__, "train": 3, "val": 2, "max_pages": 2})
            for name, demo in long_demo.LONG_DEMOS.items()}  # fmt: skip
    monkeypatch.setattr(long_demo, "LONG_DEMOS", tiny)
    video = open_long_source("demo:motion-clips-long", tok, "val", max_frames=16, max_patches_per_frame=16)
    assert len(video) == 2 and video.multimodal
    sample = video.sample(1)
    assert len(sample.images) == 16 and all(h * w <= 16 for _, (h, w) in sample.images)
    assert sample.token_ids.count(2) == 16 and "moves from" in tok.decode(sample.token_ids[48:])
    docs = open_long_source("demo:long-docs", tok, "train").sample(0)
    assert len(docs.images) == 2 and len(docs.token_ids) > 500  # two typeset pages and their text
    scenes = open_long_source("demo:scene-docs", tok, "train").sample(0)
    assert 2 <= len(scenes.images) <= 4 and "Figure 1:" in tok.decode(scenes.token_ids)
    text = open_long_source("demo:long-text", tok, "train")
    assert not text.multimodal and len(text.sample(0).token_ids) > 5000 and text.sample(0).images == []
    names = ("long-docs", "long-text", "motion-clips-long", "scene-docs")
    built = [f"{n}-{long_demo.LONG_DEMOS[n].version}" for n in names]
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == built


def test_pack_blobs_round_trip():
    blobs = [b"", b"abc", bytes(range(256))]
    assert unpack_blobs(pack_blobs(blobs)) == blobs
    with pytest.raises(ValueError):
        unpack_blobs(pack_blobs(blobs)[:-1])


def test_long_sources_mix_and_pack_in_the_joint_stages_datamodule(demo_sotu):
    """Clips (frames as consecutive image spans), interleaved documents and whole addresses, through the mixture."""
    from mm_lightning.data.mixture.packing import tokens_per_image
    from mm_lightning.data.mixture_datamodule import MixtureDataModule

    sources = [
        {"name": "addresses", "kind": "long_text", "path": "demo:long-text", "weight": 1.0, "max_tokens": 600},
        {"name": "clips", "kind": "video", "path": "demo:motion-clips", "weight": 1.0, "max_patches_per_frame": 16},
        {"name": "docs", "kind": "documents", "path": "demo:scene-docs", "weight": 1.0},
    ]
    share = {"start": 0.6, "end": 0.6, "ramp_samples": 1, "shape": "constant"}
    dm = MixtureDataModule(sources, share, seq_len=1024, samples_per_batch=5, patch_size=14, max_patches=36, seed=0)
    dm.setup("fit")
    batches = list(dm.batches("train", 0, 4))
    assert dm.vocab_size is None or dm.vocab_size == 8192
    kinds = {source for b in batches for source in b["sample_source"].tolist()}
    assert kinds == {0, 1, 2}  # every source appears
    for batch in batches:
        if batch["patches"] is None:
            continue
        expected = sum(tokens_per_image(tuple(g), 2) for g in batch["grid_hw"].tolist())
        assert int((batch["input_ids"] == IMAGE_SPAN[1]).sum()) == expected
        assert batch["patches"].shape[1] == int(batch["grid_hw"].prod(1).sum())
    clip = dm.sources()[1].sample(0)
    spans = [clip.token_ids[i : i + 3] for i in range(0, 3 * len(clip.images), 3)]
    assert len(clip.images) >= 4 and all(span == list(IMAGE_SPAN) for span in spans)  # frame after frame
