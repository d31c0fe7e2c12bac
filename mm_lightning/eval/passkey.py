"""Passkey retrieval, the long-context check of Kimi-VL's long-context stage (Mohtashami & Jaggi 2023).

A random number hides at a chosen depth in long, repetitive filler text, and the prompt ends by asking for it::

    There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.
    The grass is green. The sky is blue. ... The pass key is 48213. Remember it. 48213 is the pass key. ...
    The sun is yellow. Here we go. What is the pass key? The pass key is

The model passes when its greedy continuation starts with the number. :func:`build_passkey_prompt` builds a prompt
of exactly ``length`` tokens (the filler's last sentence is cut to fit) with the needle at a sentence boundary
near ``depth`` (0 = start of the filler, 1 = end); :func:`passkey_accuracy` scores a model at several lengths
and depths. The video variant (:func:`build_video_passkey`) hides a frame showing a number in a long demo clip of
emoji in motion and asks for the number after the last frame; :func:`video_passkey_accuracy` scores a VLM on it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo.emoji_scenes import SceneConfig
from mm_lightning.demo.long import LongDemo, generate_motion_clip, render_motion_frames, render_number_frame
from mm_lightning.generation.decode import generate
from mm_lightning.media.images import image_patches
from mm_lightning.media.interleave import MixSample
from mm_lightning.models.vlm import expand_image_placeholders
from mm_lightning.ops.patches import pack_patches
from mm_lightning.tokenizer import IMAGE_SPAN

INTRO = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
VIDEO_QUESTION = "One frame of the video shows a number. What is the number? The number is"
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class PasskeyPrompt:
    """A passkey prompt: its tokens, where the needle sits, and the expected answer."""

    token_ids: list[int]
    answer_ids: list[int]
    """Tokens of ``" " + passkey``, the continuation that passes."""
    passkey: str
    needle_start: int
    """Index of the needle's first token in ``token_ids``."""
    needle_end: int
    """Index after the needle's last token."""


def _passkey(seed: int, *parts: object, digits: int = 5) -> str:
    return str(random.Random("passkey-" + "-".join(map(str, (seed, *parts)))).randrange(10 ** (digits - 1), 10**digits))


def build_passkey_prompt(
    tokenizer, length: int, depth: float = 0.5, seed: int = 0, passkey: str | None = None
) -> PasskeyPrompt:
    """A passkey prompt of exactly ``length`` tokens with the needle near ``depth`` of the filler.

    Args:
        tokenizer: the project tokenizer.
        length: prompt tokens (intro, filler, needle and question together).
        depth: where the needle goes in the filler, 0 (first) to 1 (last); it is put at the nearest sentence start.
        seed: seeds the passkey (with ``length`` and ``depth``) when none is given.
        passkey: the number to hide (a seeded 5-digit number by default).

    Raises:
        ValueError: ``length`` cannot hold the intro, needle and question, or ``depth`` is outside [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = passkey or _passkey(seed, length, depth)
    encode = lambda text: tokenizer_lib.encode(tokenizer, text)  # noqa: E731
    intro, needle, question = encode(INTRO), encode(NEEDLE.format(key=key)), encode(QUESTION)
    budget = length - len(intro) - len(needle) - len(question)
    if budget < 0:
        raise ValueError(f"length {length} is too short for a passkey prompt (at least {length - budget} tokens)")
    filler, starts = _filler(tokenizer, budget)
    cut = min(starts, key=lambda start: abs(start - depth * budget))
    ids = intro + filler[:cut] + needle + filler[cut:] + question
    needle_start = len(intro) + cut
    return PasskeyPrompt(ids, encode(" " + key), key, needle_start, needle_start + len(needle))


def _filler(tokenizer, budget: int) -> tuple[list[int], list[int]]:
    """``budget`` filler tokens (sentences repeated, the last one cut) and the sentence starts."""
    sentences = [tokenizer_lib.encode(tokenizer, s) for s in FILLER]
    ids: list[int] = []
    starts = [0]
    while len(ids) < budget:
        ids += sentences[(len(starts) - 1) % len(sentences)]
        starts.append(min(len(ids), budget))
    return ids[:budget], sorted(set(starts))


@torch.no_grad()
def passkey_accuracy(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = 1,
    seed: int = 0,
) -> dict[int, float]:
    """Share of passkeys a language model retrieves by greedy decoding, per prompt length.

    Args:
        model: an LLM (``forward(input_ids=, kv_cache=)`` and ``new_kv_cache``, as ``mm_lightning.models.llm.LLM``).
        tokenizer: the project tokenizer.
        lengths: prompt lengths in tokens.
        depths: needle depths tried at each length.
        trials: prompts (different passkeys) per depth.
        seed: seeds the passkeys.

    Returns:
        ``{length: accuracy in [0, 1]}``.
    """
    results = {}
    with _evaluating(model) as device:
        for length in lengths:
            prompts = [build_passkey_prompt(tokenizer, length, depth, seed + trial)
                       for depth in depths for trial in range(trials)]  # fmt: skip
            input_ids = torch.tensor([p.token_ids for p in prompts], device=device)  # [B, length]
            new = generate(model, input_ids, max(len(p.answer_ids) for p in prompts) + 1, greedy=True)  # [B, T_new]
            hits = [_retrieved(tokenizer, row.tolist(), p.passkey) for row, p in zip(new, prompts)]
            results[length] = sum(hits) / len(hits)
    return results


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
    """``model`` in eval mode for the block, its mode restored after; yields the model's device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _retrieved(tokenizer, new_ids: list[int], passkey: str) -> bool:
    return tokenizer_lib.decode(tokenizer, new_ids).strip().startswith(passkey)


def passkey_metrics(accuracy: dict[int, float], prefix: str = "val/passkey") -> dict[str, float]:
    """Metric names for logging: ``{"val/passkey@4096": 1.0, ...}``."""
    return {f"{prefix}@{length}": value for length, value in accuracy.items()}


@dataclass(frozen=True)
class VideoPasskeyPrompt:
    """A long clip with one needle frame showing a number, the question after it, and the answer."""

    sample: Any
    """A ``MixSample``: frame spans then the question (no loss on the question), no answer."""
    answer_ids: list[int]
    passkey: str
    needle_frame: int


def build_video_passkey(
    tokenizer,
    num_frames: int,
    depth: float = 0.5,
    seed: int = 0,
    digits: int = 3,
    patch_size: int = 14,
    max_patches_per_frame: int = 36,
) -> VideoPasskeyPrompt:
    """A demo clip of ``num_frames`` frames (emoji in motion) whose frame nearest ``depth`` shows a number.

    Args:
        tokenizer: the project tokenizer.
        num_frames: frames of the clip.
        depth: the needle frame's position, 0 (first) to 1 (last).
        seed: seeds the clip and the number.
        digits: digits of the number.
        patch_size: patch side in pixels.
        max_patches_per_frame: cap on each frame's patches.
    """
    if num_frames < 1 or not 0.0 <= depth <= 1.0:
        raise ValueError(f"need num_frames >= 1 and depth in [0, 1], got {num_frames} and {depth}")
    demo = LongDemo("motion", "passkey", 0, 0, frames=(num_frames, num_frames), moves=(2, 3))
    clip = generate_motion_clip(SceneConfig(seed=seed), "val", 0, demo)
    key, needle = _passkey(seed, "video", num_frames, depth, digits=digits), round(depth * (num_frames - 1))
    frames = render_motion_frames(clip)
    frames[needle] = render_number_frame(clip.width, clip.height, clip.background, key)
    question = tokenizer_lib.encode(tokenizer, VIDEO_QUESTION)
    ids = [token for _ in frames for token in IMAGE_SPAN] + question
    mask = [True] * (len(ids) - len(question)) + [False] * len(question)
    images = [image_patches(frame, patch_size, max_patches_per_frame) for frame in frames]
    sample = MixSample(ids, images, mask, "passkey-video")
    return VideoPasskeyPrompt(sample, tokenizer_lib.encode(tokenizer, " " + key), key, needle)


@torch.no_grad()
def video_passkey_accuracy(
    vlm: torch.nn.Module,
    tokenizer,
    frame_counts: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    seed: int = 0,
    max_patches_per_frame: int = 36,
) -> dict[int, float]:
    """Share of needle-frame numbers a VLM reads back by greedy decoding, per clip length in frames.

    Args:
        vlm: a :class:`~mm_lightning.models.vlm.VLM` (ViT + projector + LLM).
        tokenizer: the project tokenizer.
        frame_counts: clip lengths in frames.
        depths: needle positions tried per clip length.
        seed: seeds the clips and numbers.
        max_patches_per_frame: cap on each frame's patches.

    Returns:
        ``{num_frames: accuracy in [0, 1]}``.
    """
    results = {}
    with _evaluating(vlm) as device:
        for count in frame_counts:
            hits = []
            for depth in depths:
                prompt = build_video_passkey(tokenizer, count, depth, seed, patch_size=vlm.vit.config.patch_size,
                                             max_patches_per_frame=max_patches_per_frame)  # fmt: skip
                sample = prompt.sample
                grids = [grid for _, grid in sample.images]
                ids = expand_image_placeholders(sample.token_ids, [vlm.projector.num_tokens(*g) for g in grids],
                                                vlm.image_token_id)  # fmt: skip
                packed = {k: v.to(device) for k, v in pack_patches([p for p, _ in sample.images], grids).items()}
                embeds = vlm.embed(torch.tensor([ids], device=device), packed["patches"], packed["grid_hw"],
                                   packed["seq_ids"])  # [1, T, d]  # fmt: skip
                new = generate(vlm.llm, inputs_embeds=embeds, max_new_tokens=len(prompt.answer_ids) + 1, greedy=True)
                hits.append(_retrieved(tokenizer, new[0].tolist(), prompt.passkey))
            results[count] = sum(hits) / len(hits)
    return results
