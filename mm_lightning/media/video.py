"""Videos as frames for the long-context stage: sampled at a rate, capped in number and in patches per frame.

Kimi-VL feeds a video to MoonViT frame by frame, each frame a native-resolution image, and the LLM reads the
frames' tokens in order. Here a clip becomes frames sampled at ``fps`` frames per second of video
(:func:`sample_times`): one every ``1 / fps`` seconds, or, when that would exceed ``max_frames``, ``max_frames``
frames spread uniformly over the whole clip (the centres of equal segments). Each frame is then cut into at most
``max_patches_per_frame`` patches (:func:`~mm_lightning.ops.patches.fit_to_patch_grid`, aspect ratio kept), which
bounds the tokens a frame costs. A clip with its caption becomes one ``MixSample``: every frame an image span
``<|image_start|> <|image|> <|image_end|>``, then the caption, then EOD (:func:`build_video_sample`).

Decoding uses PyAV (``pip install 'mm_lightning[video]'``), imported only when a file is decoded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.errors import MMLightningError
from mm_lightning.media.images import fit_within, image_patches
from mm_lightning.media.interleave import MixSample
from mm_lightning.tokenizer import IMAGE_SPAN


class MissingExtraError(MMLightningError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class VideoDecodeError(MMLightningError):
    """A video file that cannot be opened or decoded (corrupt, truncated, no video stream, no frames)."""


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a clip."""

    fps: float = 1.0
    """Frames per second of video to sample (the rate)."""
    max_frames: int = 64
    """Cap on frames per clip: a longer clip gets this many, spread uniformly over it."""
    max_patches_per_frame: int = 64
    """Cap on patches per frame (frames are scaled down, aspect ratio kept)."""
    max_side: int | None = None
    """Scale decoded frames down to this longer side right away (saves memory; None keeps them)."""

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.max_frames < 1 or self.max_patches_per_frame < 1:
            raise ValueError(f"need fps > 0, max_frames >= 1 and max_patches_per_frame >= 1, got {self}")


def import_av() -> Any:
    """The ``av`` (PyAV) module, or a :class:`MissingExtraError` naming the ``video`` extra."""
    try:
        import av
    except ImportError:
        raise MissingExtraError(
            "Decoding videos needs PyAV: pip install 'mm_lightning[video]' (or pip install av)"
        ) from None
    return av


def sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Timestamps (seconds) of the frames to take from a clip of ``duration`` seconds.

    One frame every ``1 / fps`` seconds from 0 (at least one frame); when that gives more than ``max_frames``,
    ``max_frames`` timestamps at the centres of equal segments of the clip instead.
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError(f"need fps > 0 and max_frames >= 1, got {fps} and {max_frames}")
    count = max(1, math.ceil(duration * fps - 1e-6))
    if count <= max_frames:
        return [i / fps for i in range(count)]
    return [(i + 0.5) * duration / max_frames for i in range(max_frames)]


def sample_indices(num_frames: int, native_fps: float, fps: float, max_frames: int) -> list[int]:
    """Indices of the frames to take from ``num_frames`` frames recorded at ``native_fps`` (see :func:`sample_times`).

    Sampling faster than the clip's own rate gives every frame once.
    """
    if num_frames < 1:
        return []
    times = sample_times(num_frames / native_fps, min(fps, native_fps), max_frames)
    return sorted({min(num_frames - 1, math.floor(t * native_fps + 1e-6)) for t in times})


def select_frames(frames: Sequence[Image.Image], native_fps: float, sampling: FrameSampling) -> list[Image.Image]:
    """The frames of an in-memory clip recorded at ``native_fps`` that ``sampling`` takes."""
    return [frames[i] for i in sample_indices(len(frames), native_fps, sampling.fps, sampling.max_frames)]


def decode_video(source: str | Path | bytes, sampling: FrameSampling) -> tuple[list[Image.Image], list[float]]:
    """Decode the sampled frames of a video file (or its bytes) as RGB images, with their timestamps.

    Raises:
        MissingExtraError: PyAV is not installed.
        VideoDecodeError: the file cannot be opened or decoded, has no video stream or no frame.
    """
    av = import_av()
    target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with av.open(target) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            times = sample_times(duration, sampling.fps, sampling.max_frames) if duration else None
            frames, stamps = _decode_at(container, stream, times, sampling)
    except VideoDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - FFmpeg raises many error types on corrupt input
        raise VideoDecodeError(f"{type(err).__name__}: {err}") from None
    if not frames:
        raise VideoDecodeError("no decodable frame")
    if times is None:  # unknown duration: all frames were kept, sample them now by their timestamps
        keep = sample_indices(len(frames), _rate(stream) or 1.0, sampling.fps, sampling.max_frames)
        frames, stamps = [frames[i] for i in keep], [stamps[i] for i in keep]
    return frames, stamps


def _rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    if stream.frames and _rate(stream):
        return stream.frames / _rate(stream)
    return None


def _decode_at(container: Any, stream: Any, times: list[float] | None, sampling: FrameSampling):
    """Decode in order, keeping the frame nearest each target time (every frame when ``times`` is None)."""
    rate = _rate(stream)
    half_period = 0.5 / rate if rate else 0.0
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    frames, stamps, next_target = [], [], 0
    for number, frame in enumerate(container.decode(stream)):
        t = (frame.time - start) if frame.time is not None else number / (rate or 1.0)
        if times is not None:
            served = next_target
            while next_target < len(times) and times[next_target] < t + half_period:
                next_target += 1  # close targets share one frame
            if next_target == served:
                continue
        image = frame.to_image()
        frames.append(fit_within(image, sampling.max_side) if sampling.max_side else image)
        stamps.append(round(t, 3))
        if times is not None and next_target == len(times):
            break
    return frames, stamps


def build_video_sample(
    frames: Sequence[Image.Image | bytes],
    caption: str,
    tokenizer,
    patch_size: int = 14,
    max_patches_per_frame: int = 64,
    prompt: str | None = None,
    source: str = "video",
) -> Any:
    """A clip and its caption as a ``MixSample``: frame spans, then (an optional prompt and) the caption, then EOD.

    Args:
        frames: the sampled frames, in order (PIL images or encoded image bytes).
        caption: the text the model learns to produce after the frames.
        tokenizer: the project tokenizer.
        patch_size: patch side in pixels.
        max_patches_per_frame: cap on each frame's patches (its token cost).
        prompt: text between the frames and the caption that gets no loss (e.g. a question).
        source: the sample's source name.
    """
    images = [image_patches(frame, patch_size, max_patches_per_frame) for frame in frames]
    ids = [token for _ in frames for token in IMAGE_SPAN]
    mask = [True] * len(ids)
    if prompt:
        prompt_ids = tokenizer_lib.encode(tokenizer, prompt)
        ids += prompt_ids
        mask += [False] * len(prompt_ids)
    answer = tokenizer_lib.encode(tokenizer, caption) + [tokenizer_lib.eod_id(tokenizer)]
    ids += answer
    mask += [True] * len(answer)
    return MixSample(ids, images, mask if prompt else None, source)
