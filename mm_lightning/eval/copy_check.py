"""The copy check: does the LLM copy a span of random tokens from anywhere in its context?

Passkey accuracy (:mod:`~mm_lightning.eval.passkey`) needs a whole 5-digit key right, so it sits at 0 while the
copying it rests on forms, fades or comes back. This check measures the copying itself, in the form an induction head
serves (Olsson et al. 2022): each probe row is ``length`` random ids of the tokenizer's common tokens
(:func:`probe_ids`; no words, no template, nothing a corpus could teach) whose last ``span`` ids repeat a span from
earlier in the row, the spans' depths spread evenly from the row's start to ``3 * span`` before its end.
Teacher-forced, the model predicts each id of the repeat after its first; nothing but the earlier occurrence tells
them. The ``span`` ids just before the repeat are random and unpredictable: the model's loss on them is the
reference a model that does not copy gets.

- ``copy``: the share of the repeat's ids (after its first) that the model's top guess gets right; chance is one in
  the probe's ids.
- ``copy_gain``: nats per token the repeat saves over the random ids before it; 0 for a model that does not copy.

Rows are a pure function of ``(tokenizer size, length, rows, span, seed)``: the same at every validation and stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.errors import ConfigError
from mm_lightning.inference import evaluating, projecting_positions

DEFAULT_ROWS = 8
"""Probe rows per length: 8 spans of 15 scored ids each, 120 ids a figure."""
DEFAULT_SPAN = 16
"""Ids of the repeated span."""
COMMON_IDS = 1000
"""The probe's ids: the tokenizer's first 1,000 merges (:func:`probe_ids`)."""
BATCH_TOKENS = 16384
"""Probe tokens in one forward (rows = ``BATCH_TOKENS // length``, at least one)."""


@dataclass(frozen=True)
class CopyScore:
    """The copy check at one length."""

    copy: float
    """Share of the repeat's ids (after its first) the model's top guess gets right."""
    gain: float
    """Mean loss on the random ids before the repeat minus on the repeat's ids, in nats."""


def probe_ids(tokenizer) -> tuple[int, int]:
    """``(low, high)``: the probe draws its ids from ``low <= id < high``, the tokenizer's first :data:`COMMON_IDS`
    merges (all its ordinary ids when it has too few).

    A BPE tokenizer numbers its merges by how often they occurred, so these are tokens a text-trained model has
    seen many times. Rare ids barely train in text pre-training (every softmax only pushes them down), and a model
    cannot copy a token it cannot write: on uniformly drawn ids a stage-1 checkpoint that passes 30% of passkeys at
    256 tokens copied none of a span (README, "The copy check").
    """
    vocab = tokenizer.get_vocab_size()
    if vocab >= tokenizer_lib.MIN_VOCAB_SIZE + COMMON_IDS:
        return tokenizer_lib.MIN_VOCAB_SIZE, tokenizer_lib.MIN_VOCAB_SIZE + COMMON_IDS
    return len(tokenizer_lib.SPECIAL_TOKENS), vocab


def copy_chance(tokenizer) -> float:
    """The ``copy`` share a uniform guess over the probe's ids gets."""
    low, high = probe_ids(tokenizer)
    return 1.0 / (high - low)


def check_copy_probe(length: int, rows: int, span: int, where: str = "the copy check") -> None:
    """A clear ``ConfigError`` for probe rows that cannot hold a span, random ids and the repeat."""
    if rows < 1 or span < 2 or length < 3 * span:
        raise ConfigError(
            f"{where} needs rows >= 1, span >= 2 and each length >= 3 * span (the span, {span} random ids and the "
            f"repeat), got rows={rows}, span={span}, length={length}"
        )


def copy_probe_rows(tokenizer, length: int, rows: int = DEFAULT_ROWS, span: int = DEFAULT_SPAN, seed: int = 0
                    ) -> torch.Tensor:  # fmt: skip
    """``[rows, length]`` random ids of :func:`probe_ids`, each row's last ``span`` a copy of the span at its row's
    depth."""
    check_copy_probe(length, rows, span)
    low, high = probe_ids(tokenizer)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    ids = torch.randint(low, high, (rows, length), generator=generator)
    last_start = length - 3 * span  # the deepest span ends where the random reference ids begin
    for row in range(rows):
        start = round(row * last_start / max(rows - 1, 1))
        ids[row, length - span :] = ids[row, start : start + span]
    return ids


def copy_scores(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int],
    rows: int = DEFAULT_ROWS,
    span: int = DEFAULT_SPAN,
    seed: int = 0,
    batch_tokens: int = BATCH_TOKENS,
) -> dict[int, CopyScore]:
    """The copy check of ``model`` (an LLM taking ``input_ids``) at each length, on :func:`copy_probe_rows`, at most
    ``batch_tokens`` tokens a forward."""
    device = next(model.parameters()).device
    results = {}
    with evaluating(model):
        for length in lengths:
            ids = copy_probe_rows(tokenizer, length, rows, span, seed).to(device)
            scored = slice(length - 2 * span, length - 1)  # positions predicting the random ids, then the repeat
            losses, hits = [], []
            for batch in ids.split(max(1, batch_tokens // length)):
                with projecting_positions(model, scored):
                    logits = model(input_ids=batch)
                if logits.shape[1] == length:  # a model without an lm_head to project fewer positions
                    logits = logits[:, scored]
                targets = batch[:, scored.start + 1 : scored.stop + 1]
                losses.append(F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none"))
                hits.append(logits[:, span:].argmax(-1) == targets[:, span:])  # the repeat after its first id
            loss = torch.cat(losses)  # [rows, 2 * span - 1]: the random ids, the repeat's first, the repeat's rest
            gain = loss[:, : span - 1].mean() - loss[:, span:].mean()
            results[length] = CopyScore(copy=torch.cat(hits).float().mean().item(), gain=gain.item())
    return results


def copy_metrics(scores: dict[int, CopyScore], chance: float) -> dict[str, float]:
    """Metric names for logging: ``val/copy@1024``, ``val/copy_gain@1024`` and ``val/copy_chance``."""
    metrics = {}
    for length, score in scores.items():
        metrics[f"val/copy@{length}"] = score.copy
        metrics[f"val/copy_gain@{length}"] = score.gain
    return metrics | {"val/copy_chance": chance}
