"""The copy check: does the LLM copy a span of random tokens from anywhere in its context?

Passkey accuracy (:mod:`~mm_lightning.eval.passkey`) needs a whole 5-digit key right, so it sits at 0 while the
copying it rests on forms, fades or comes back. This check measures the copying itself, in the form an induction head
serves (Olsson et al. 2022): each probe row is ``length`` random ids of the tokenizer's common tokens
(:func:`probe_ids`; no words, no template, nothing a corpus could teach) holding a span ``A`` and right after it a
span ``B``, at a depth spread evenly over the rows from the row's start to ``4 * span`` before its end; the row ends
with ``B`` shuffled, then ``A`` again. Teacher-forced, the model predicts each id of the repeat after its first;
nothing but the order of the earlier ``A`` tells them. The shuffled ``B`` is the reference: its ids also stood earlier
in the row, so a model that merely favours tokens it has seen in its context does as well on it as on the repeat,
and only copying in order gains (against fresh random ids as the reference, the tiny LLM gained ~1 nat after 4-6
steps of the short test pipeline while copying none of a span).

- ``copy``: the share of the repeat's ids (after its first) that the model's top guess gets right; chance is one in
  the probe's ids.
- ``copy_gain``: nats per token the repeat saves over the shuffled span before it; 0 for a model that does not
  copy in order.

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
    """Mean loss on the shuffled span before the repeat minus on the repeat's ids (each after its first), in nats."""


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
    """A clear ``ConfigError`` for probe rows that cannot hold the two spans, the shuffled one and the repeat."""
    if rows < 1 or span < 2 or length < 4 * span:
        raise ConfigError(
            f"{where} needs rows >= 1, span >= 2 and each length >= 4 * span (two spans, one shuffled and one "
            f"repeated), got rows={rows}, span={span}, length={length}"
        )


def copy_probe_rows(tokenizer, length: int, rows: int = DEFAULT_ROWS, span: int = DEFAULT_SPAN, seed: int = 0
                    ) -> torch.Tensor:  # fmt: skip
    """``[rows, length]`` random ids of :func:`probe_ids`: spans ``A`` then ``B`` at the row's depth, and at the
    row's end ``B`` shuffled, then ``A`` again."""
    check_copy_probe(length, rows, span)
    low, high = probe_ids(tokenizer)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    ids = torch.randint(low, high, (rows, length), generator=generator)
    last_start = length - 4 * span  # the deepest A and B end where the shuffled B begins
    for row in range(rows):
        start = round(row * last_start / max(rows - 1, 1))
        first, second = ids[row, start : start + span], ids[row, start + span : start + 2 * span]
        ids[row, length - 2 * span : length - span] = second[torch.randperm(span, generator=generator)]
        ids[row, length - span :] = first
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
            scored = slice(length - 2 * span, length - 1)  # positions predicting the shuffled B, then the repeat
            losses, hits = [], []
            for batch in ids.split(max(1, batch_tokens // length)):
                with projecting_positions(model, scored):
                    logits = model(input_ids=batch)
                if logits.shape[1] == length:  # a model without an lm_head to project fewer positions
                    logits = logits[:, scored]
                targets = batch[:, scored.start + 1 : scored.stop + 1]
                losses.append(F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none"))
                hits.append(logits[:, span:].argmax(-1) == targets[:, span:])  # the repeat after its first id
            loss = torch.cat(losses)  # [rows, 2 * span - 1]: shuffled B after its first, the repeat's first, its rest
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
