"""Turn video-caption data (captions files naming video files) into litdata shards of sampled frames.

The output folder holds what :class:`~mm_lightning.data.mixture.long_sources.VideoSource` reads::

    OUT/train/, OUT/val/    litdata chunks of records {"frames": packed JPEG frames, "timestamps": JSON list of
                            seconds, "caption": str, "source": the captions file and row}
    OUT/prep_summary.json   clips and skipped items per split, and the sampling options

Captions files are ``.jsonl`` records or ``.csv`` rows with a video path (relative to the captions file's folder)
and a caption, as for images (:mod:`mm_lightning.prep.image_readers`). Each clip is decoded once with PyAV (the
``video`` extra): frames are sampled at ``fps`` with at most ``max_frames`` (uniform over longer clips; see
:func:`mm_lightning.media.video.sample_times`), scaled down to ``max_side`` and stored as JPEG, so training only
cuts them into patches. Bad inputs follow :mod:`mm_lightning.prep.media`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from mm_lightning.errors import MMLightningError
from mm_lightning.media.images import encode_image
from mm_lightning.media.interleave import pack_blobs
from mm_lightning.media.video import FrameSampling, VideoDecodeError, decode_video, import_av
from mm_lightning.prep.image_readers import caption_file_rows, caption_reason
from mm_lightning.prep.media import Failure, MediaItem, MediaKind, PrepRun, prepare_media_shards
from mm_lightning.prep.text_readers import SourceFile, discover_files

SKIP_REASONS = {
    "bad_video": "undecodable or corrupt video",
    "missing_video": "video file missing",
    "missing_caption": "caption missing or not a string",
    "empty_caption": "empty or whitespace-only caption",
    "malformed": "malformed record",
    "unreadable_file": "file unreadable",
}


class VideoPrepError(MMLightningError):
    """Video-caption data that cannot be prepared (no usable clips, or a bad clip under ``strict``)."""


def find_video_sources(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The captions ``.jsonl``/``.csv`` files of ``inputs`` (files, or folders searched recursively)."""
    kinds = {".jsonl": "jsonl", ".csv": "csv"}
    return discover_files(
        inputs, lambda path: kinds.get(path.suffix.lower()), VideoPrepError, "No captions .jsonl/.csv files"
    )


def iter_clips(source: SourceFile, options: dict) -> Iterator[MediaItem]:
    """Every row of a captions file as an item: the video path and caption to decode, or why it is skipped."""
    video_field, caption_field = options["video_field"], options["caption_field"]
    for number, row in caption_file_rows(source.path):
        if not isinstance(row, dict) or not isinstance(row.get(video_field), str):
            yield MediaItem(number, f"{number}", None, "malformed")
            continue
        where, path = f"{number} ({row[video_field]})", source.path.parent / row[video_field]
        caption = row.get(caption_field)
        reason = caption_reason(caption) or (None if path.is_file() else "missing_video")
        payload = (str(path), caption, f"{source.key}:{number}", _sampling(options)) if reason is None else None
        yield MediaItem(number, where, payload, reason)


def _sampling(options: dict) -> FrameSampling:
    return FrameSampling(fps=options["fps"], max_frames=options["max_frames"], max_side=options["max_side"])


def load_clip(payload: tuple[str, str, str, FrameSampling]) -> dict | Failure:
    """Decode one clip's sampled frames into a shard record (a pool task)."""
    path, caption, where, sampling = payload
    try:
        frames, stamps = decode_video(path, sampling)
    except VideoDecodeError as err:
        return Failure("bad_video", str(err))
    return {
        "frames": pack_blobs([encode_image(frame, "JPEG") for frame in frames]),
        "timestamps": json.dumps(stamps),
        "caption": caption,
        "source": where,
    }


VIDEO_KIND = MediaKind(
    noun="clip", plural="clips", skip_reasons=SKIP_REASONS, error=VideoPrepError,
    find_sources=find_video_sources, iter_items=iter_clips, load=load_clip,
)  # fmt: skip


def prepare_video_shards(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    video_field: str = "video",
    caption_field: str = "caption",
    fps: float = 1.0,
    max_frames: int = 64,
    max_side: int = 448,
    run: PrepRun = PrepRun(),
) -> dict:
    """Write video-caption clips into ``output_dir/{train/,val/,prep_summary.json}``.

    Args:
        inputs: captions ``.jsonl``/``.csv`` files or folders of them (video paths relative to each file).
        output_dir: a local folder; it must not hold prepared data already unless ``run.overwrite``.
        video_field: the video-path key (column) of the captions files.
        caption_field: the caption key (column).
        fps: frames sampled per second of video.
        max_frames: cap on frames per clip (spread uniformly over longer clips).
        max_side: frames are scaled down to this longer side.
        run: split share, strictness (a bad clip: undecodable video, missing file or caption, malformed row),
            decoding processes, overwrite, progress and where bad clips are reported.

    Returns:
        The summary also written to ``prep_summary.json``.

    Raises:
        VideoPrepError: nothing usable, a bad clip under ``run.strict``, or an occupied output.
        MissingExtraError: PyAV is not installed.
    """
    import_av()  # fail once, clearly, rather than once per clip
    sampling = FrameSampling(fps=fps, max_frames=max_frames, max_side=max_side)  # validates the values
    options = {"video_field": video_field, "caption_field": caption_field, "fps": sampling.fps,
               "max_frames": sampling.max_frames, "max_side": max_side}  # fmt: skip
    return prepare_media_shards(VIDEO_KIND, inputs, output_dir, options, run)
