"""Passkey retrieval, the long-context check of Kimi-VL's long-context stage (Mohtashami & Jaggi 2023).

A random number hides at a chosen depth in long, repetitive filler text, and the prompt ends by asking for it::

    A locker number is written once in the notes below, between many lines that do not matter. Find it and
    keep it in mind. The tide came in. Gulls circled over the pier. ... The map is in locker 48213. Locker
    48213 holds the map. ... Fog rolled over the harbour. Which locker holds the map? The map is in locker

The model passes when its greedy continuation starts with the number. The structure is the paper's; the wording
is this project's own, not the paper's ("The grass is green. ... The pass key is"): that wording is public and
is what a corpus teaching look-ups would copy, and the evaluation prompts must share their template with no
training document. :func:`template_sentences` lists the fixed sentences; no demo training document contains one
(``tests/eval/test_passkey.py`` checks every demo corpus), and a corpus that teaches retrieval must keep it so.

:func:`build_passkey_prompt` builds a prompt of exactly ``length`` tokens (the filler's last sentence is cut to
fit) with the needle at a sentence boundary near ``depth`` (0 = start of the filler, 1 = end);
:func:`build_passkey_prompts` builds ``count`` of them per length, needles spread evenly over the depth and every
passkey different; :func:`passkey_scores` scores a model on them in batches. Chance is one in the 90,000
five-digit numbers (:func:`passkey_chance`). The video variant (:func:`build_video_passkey`) hides a frame
showing a number in a long demo clip of emoji in motion and asks for the number after the last frame;
:func:`video_passkey_accuracy` scores a VLM on it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo.emoji_scenes import SceneConfig
from mm_lightning.demo.long import LongDemo, generate_motion_clip, render_motion_frames, render_number_frame
from mm_lightning.generation.decode import READ_ONLY_IDS, generate
from mm_lightning.inference import evaluating, projecting_positions
from mm_lightning.media.images import image_patches
from mm_lightning.media.interleave import MixSample
from mm_lightning.models.vlm import expand_image_placeholders
from mm_lightning.ops.patches import pack_patches
from mm_lightning.tokenizer import IMAGE_SPAN

INTRO = (
    "A locker number is written once in the notes below, between many lines that do not matter. "
    "Find it and keep it in mind. "
)
FILLER = (
    "The tide came in. ",
    "Gulls circled over the pier. ",
    "The tide went out. ",
    "A bell rang on the buoy. ",
    "Fog rolled over the harbour. ",
)
NEEDLE = "The map is in locker {key}. Locker {key} holds the map. "
QUESTION = "Which locker holds the map? The map is in locker"
VIDEO_QUESTION = "One frame of the video shows a number. What is the number? The number is"
PASSKEY_DIGITS = 5
VIDEO_PASSKEY_DIGITS = 3
DEFAULT_PROMPTS = 30
"""Text prompts per length, issue 12's floor: one prompt is 0.033 of the figure (with 3 it was a third)."""
DEFAULT_VIDEO_PROMPTS = 3
"""Clips per frame count of the video variant (each a VLM forward over the whole clip)."""
BATCH_TOKENS = 16384
"""Prompt tokens decoded in one batch (rows = ``BATCH_TOKENS // length``, at least one)."""


def template_sentences() -> list[str]:
    """The fixed sentences of the text template (the needle's around its key) that no training document may hold.

    Fragments of fewer than four words (``"Locker"``, ``"holds the map"``) are left out: they are ordinary text.
    """
    parts = re.split(r"\{key\}|(?<=[.?])\s+", " ".join([INTRO, *FILLER, NEEDLE, QUESTION]))
    fragments = {part.strip(" .?") for part in parts}
    return sorted(fragment for fragment in fragments if len(fragment.split()) >= 4)


def passkey_chance(digits: int = PASSKEY_DIGITS) -> float:
    """Probability of guessing a passkey: one in the ``9 * 10 ** (digits - 1)`` numbers of ``digits`` digits."""
    return 1.0 / (9 * 10 ** (digits - 1))


def spread_depths(count: int) -> list[float]:
    """``count`` needle depths spread evenly over [0, 1], each in the middle of its share: 1/6, 1/2, 5/6 for 3."""
    return [(index + 0.5) / count for index in range(count)]


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


def _passkey(seed: int, *parts: object, digits: int = PASSKEY_DIGITS) -> str:
    return str(random.Random("passkey-" + "-".join(map(str, (seed, *parts)))).randrange(10 ** (digits - 1), 10**digits))


def distinct_passkeys(count: int, seed: int, *parts: object, digits: int = PASSKEY_DIGITS) -> list[str]:
    """``count`` different ``digits``-digit numbers, a deterministic function of ``seed`` and ``parts``."""
    rng = random.Random("passkeys-" + "-".join(map(str, (seed, *parts))))
    return [str(number) for number in rng.sample(range(10 ** (digits - 1), 10**digits), count)]


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


def build_passkey_prompts(tokenizer, length: int, count: int = DEFAULT_PROMPTS, seed: int = 0) -> list[PasskeyPrompt]:
    """``count`` prompts of ``length`` tokens: needles at :func:`spread_depths`, every passkey different.

    Args:
        tokenizer: the project tokenizer.
        length: prompt tokens.
        count: prompts.
        seed: seeds the passkeys (with ``length``): the same arguments give the same prompts.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    depths, keys = spread_depths(count), distinct_passkeys(count, seed, length)
    return [build_passkey_prompt(tokenizer, length, depth, passkey=key) for depth, key in zip(depths, keys)]


def _filler(tokenizer, budget: int) -> tuple[list[int], list[int]]:
    """``budget`` filler tokens (sentences repeated, the last one cut) and the sentence starts."""
    sentences = [tokenizer_lib.encode(tokenizer, s) for s in FILLER]
    ids: list[int] = []
    starts = [0]
    while len(ids) < budget:
        ids += sentences[(len(starts) - 1) % len(sentences)]
        starts.append(min(len(ids), budget))
    return ids[:budget], sorted(set(starts))


@dataclass(frozen=True)
class PasskeyScores:
    """A model's passkey figures at one prompt length, each a share in [0, 1]."""

    accuracy: float
    """Prompts whose greedy continuation starts with the passkey."""
    first_token: float
    """Answers whose first token is the model's top guess after the prompt: the look-up."""
    later_tokens: float
    """Later answer tokens that are the top guess given the true ones before them: the copy (NaN: none)."""


@torch.no_grad()
def passkey_scores(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int],
    prompts: int = DEFAULT_PROMPTS,
    seed: int = 0,
    batch_tokens: int = BATCH_TOKENS,
) -> dict[int, PasskeyScores]:
    """Passkey accuracy by greedy decoding and where retrieval breaks, per prompt length, from one forward a prompt.

    A passkey passes only when every token of it comes out right, so accuracy stays 0 while a model copies all but
    one: a model whose copying matches the one token before the answer (``er``, the end of `` locker``, which the
    prompt holds three more times) can miss the first token of every key and copy the rest once given it. So the
    answer's tokens are scored apart too, each given the true ones before it (teacher forcing): the first is the
    look-up, the later ones the copy.

    One forward over prompt and answer gives both. Greedy decoding writes the teacher-forced guesses up to the first
    wrong one, so a prompt whose guesses are all right passes, and one whose text up to its first wrong guess already
    leaves the passkey fails; only the rest (a key spelled in other tokens) is decoded, in batches of its length.
    The accuracy is greedy decoding's up to float rounding on near ties between the two paths' logits.

    Args:
        model: an LLM (``forward(input_ids=, kv_cache=)`` and ``new_kv_cache``, as ``mm_lightning.models.llm.LLM``).
        tokenizer: the project tokenizer.
        lengths: prompt lengths in tokens.
        prompts: prompts per length (:func:`build_passkey_prompts`).
        seed: seeds the passkeys.
        batch_tokens: most tokens in one forward; at least one prompt a batch.

    Returns:
        ``{length: PasskeyScores}``.
    """
    results = {}
    device = next(model.parameters()).device
    suppress = torch.tensor(READ_ONLY_IDS, device=device)
    with evaluating(model):
        for length in lengths:
            by_answer: dict[int, list[PasskeyPrompt]] = {}  # prompts by answer tokens: one tensor per batch
            for prompt in build_passkey_prompts(tokenizer, length, prompts, seed):
                by_answer.setdefault(len(prompt.answer_ids), []).append(prompt)
            passed, first, later, undecided = 0, [], [], []
            for size, group in sorted(by_answer.items()):
                answered = slice(-size - 1, -1)  # the positions whose next token is an answer token
                rows = max(1, batch_tokens // (length + size))
                for start in range(0, len(group), rows):
                    chunk = group[start : start + rows]
                    ids = torch.tensor([p.token_ids + p.answer_ids for p in chunk], device=device)
                    with projecting_positions(model, answered):
                        logits = model(input_ids=ids)
                    if logits.shape[1] != size:  # a model without an lm_head to project fewer positions
                        logits = logits[:, answered]
                    guesses = logits.index_fill(-1, suppress, float("-inf")).argmax(-1).tolist()  # as greedy does
                    for prompt, guess in zip(chunk, guesses):
                        right = [g == a for g, a in zip(guess, prompt.answer_ids)]
                        first.append(right[0])
                        later += right[1:]
                        if all(right):
                            passed += 1
                        elif _may_spell(tokenizer, prompt, guess[: right.index(False) + 1]):
                            undecided.append(prompt)
            rows = max(1, batch_tokens // length)
            with _last_position_logits(model):
                for start in range(0, len(undecided), rows):
                    passed += sum(_decode_hits(model, tokenizer, undecided[start : start + rows], device))
            later_share = sum(later) / len(later) if later else float("nan")
            results[length] = PasskeyScores(passed / len(first), sum(first) / len(first), later_share)
    return results


def _may_spell(tokenizer, prompt: PasskeyPrompt, written: list[int]) -> bool:
    """Whether greedy text that starts with tokens ``written`` (the answer's up to a wrong guess) can still pass."""
    text = tokenizer_lib.decode(tokenizer, written).strip()
    return prompt.passkey.startswith(text) or text.startswith(prompt.passkey)


def _decode_hits(model: torch.nn.Module, tokenizer, prompts: list[PasskeyPrompt], device: torch.device) -> list[bool]:
    """Whether greedy decoding retrieves each prompt's passkey (the prompts share one length)."""
    input_ids = torch.tensor([p.token_ids for p in prompts], device=device)  # [B, length]
    new = generate(model, input_ids, max(len(p.answer_ids) for p in prompts) + 1, greedy=True)  # [B, T_new]
    return [_retrieved(tokenizer, row.tolist(), p.passkey) for row, p in zip(new, prompts)]


def _last_position_logits(model: torch.nn.Module) -> AbstractContextManager[None]:
    """For the block, the model's ``lm_head`` (if any) projects the last position only.

    Greedy decoding reads the last position's logits alone; the prompt's others would be ``[B, T, vocab]`` (1 GB
    for 30 prompts of 1,024 tokens and 8,192 words) and a third of the time. The model's own ``forward`` still runs,
    so FSDP2's hooks gather its weights as in training.
    """
    return projecting_positions(model, slice(-1, None))


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
    digits: int = VIDEO_PASSKEY_DIGITS,
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
    prompts: int = DEFAULT_VIDEO_PROMPTS,
    seed: int = 0,
    max_patches_per_frame: int = 36,
) -> dict[int, float]:
    """Share of needle-frame numbers a VLM reads back by greedy decoding, per clip length in frames.

    Args:
        vlm: a :class:`~mm_lightning.models.vlm.VLM` (ViT + projector + LLM).
        tokenizer: the project tokenizer.
        frame_counts: clip lengths in frames.
        prompts: clips per length, their needle frames at :func:`spread_depths`.
        seed: seeds the clips and numbers.
        max_patches_per_frame: cap on each frame's patches.

    Returns:
        ``{num_frames: accuracy in [0, 1]}``.
    """
    results = {}
    device = next(vlm.parameters()).device
    with evaluating(vlm), _last_position_logits(vlm.llm):
        for count in frame_counts:
            hits = []
            for depth in spread_depths(prompts):
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
