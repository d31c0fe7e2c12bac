"""Capability verdicts of a pipeline's stages: does each stage do what it is for, beyond chance and its start?

A stage's headline metric can improve while the model learns nothing the stage is for: the caption loss falls as
the model learns the captions' wording and ignores its images (issue 12). So each stage is judged by the
capability checks its validation logged (``start_metrics`` and ``final_metrics`` in the manifest), each against
its chance or baseline and, where the stage should move it, its start:

- ViT stage (``val/probe_*``): emoji-identity retrieval on probe images, recall@1 in both directions above twice
  chance, above the colour-only baseline and above its start;
- every stage with a VLM (``val/image_use_gap``, ``val/caption_*``): the image-use gap (caption loss with
  mismatched images minus with the right ones) above :data:`MIN_IMAGE_USE_GAP` nats per token, and greedy
  captions naming the background colour and at least one emoji of the scene more often than chance;
- a stage that lengthens the context (longer rows or another RoPE base than the stage before it): passkey
  accuracy at its longest length above its start (beside it, where it breaks: the shares of the answers' first
  tokens and of their later ones guessed right given the true ones before), and likewise the copy check (the share
  of a repeated span of random ids copied right, its gain in nats beside it).

Figures no check judges (recall@5, all-emoji accuracy, passkey and copy at other lengths or in other stages) are listed
beside the checks for context. A stage with no check (text pre-training) is judged by its headline metric alone.

These rules ask for a capability at all. How much of it a run must show is the pipeline file's to say: a stage's
``bars`` (tag -> the value it must reach, e.g. ``{val/image_use_gap: 0.3}``, recorded in its manifest entry) join the
check of that tag, or make one where no rule above judges the tag; a tag the stage never logged fails, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

Stage = dict[str, Any]
Metrics = dict[str, float]

MIN_IMAGE_USE_GAP = 0.05
"""Nats per caption token the right images must save over mismatched ones for a VLM to count as using them."""
CHANCE_FACTOR = 2.0
"""How many times chance emoji-identity recall@1 must reach."""
MARKS = {True: "PASS", False: "FAIL", None: "info"}


@dataclass(frozen=True)
class Bar:
    """A value a figure must exceed, and what falling short of it means."""

    name: str
    """How ``needs`` names it: ``"2x chance"``, ``"start"``, or the number itself."""
    value: float
    failure: str
    """The plain consequence when the figure does not exceed it."""
    reach: bool = False
    """Reaching the value is enough (a pipeline file's bar, ``>=``); otherwise the figure must exceed it (``>``)."""

    def met_by(self, figure: float) -> bool:
        """Whether ``figure`` clears the bar (never when it is NaN: a figure the stage did not log)."""
        return figure >= self.value if self.reach else figure > self.value

    def __str__(self) -> str:
        return f"{'>=' if self.reach else '>'} {self.name}"


@dataclass(frozen=True)
class Check:
    """One capability figure of a stage, what it is compared with, and whether it passes.

    Attributes:
        label: what the figure is, e.g. ``"image-use gap"``.
        value: the figure at the end of the stage (NaN: the stage did not log it).
        references: ``(name, value)`` pairs printed beside it (chance, baselines, start).
        bars: what it must exceed to pass; none: shown for context, not judged.
        unit: printed after the value, e.g. ``" nats"``.
        tag: the logged tag the figure comes from (where a pipeline file's bar for it joins the check).
    """

    label: str
    value: float
    references: tuple[tuple[str, float], ...] = ()
    bars: tuple[Bar, ...] = ()
    unit: str = ""
    tag: str | None = None

    @property
    def passed(self) -> bool | None:
        """Whether the figure clears every bar (``None`` when it has none)."""
        return all(bar.met_by(self.value) for bar in self.bars) if self.bars else None

    def describe(self) -> str:
        """One line: ``FAIL image-use gap 0.0004 nats (start 0.001; needs > 0.05): the model ignores its images``."""
        beside = ", ".join(f"{name} {_number(value)}" for name, value in self.references)
        if self.bars:
            needs = "needs " + ", ".join(str(bar) for bar in self.bars)
            beside = f"{beside}; {needs}" if beside else needs
        value = "not logged" if math.isnan(self.value) else f"{_number(self.value)}{self.unit}"
        line = f"{MARKS[self.passed]} {self.label} {value}"
        line += f" ({beside})" if beside else ""
        failed = next((bar for bar in self.bars if not bar.met_by(self.value)), None)
        return f"{line}: {failed.failure}" if failed else line


def _number(value: float) -> str:
    return f"{value:.4g}"


def _present(*pairs: tuple[str, float | None]) -> tuple[tuple[str, float], ...]:
    """The ``(name, value)`` pairs whose value is known."""
    return tuple((name, value) for name, value in pairs if value is not None)


def _bars(*bars: Bar | None) -> tuple[Bar, ...]:
    return tuple(bar for bar in bars if bar is not None)


def _above_start(start: float | None, failure: str) -> Bar | None:
    return None if start is None else Bar("start", start, failure)


def vit_checks(start: Metrics, final: Metrics) -> list[Check]:
    """Emoji-identity retrieval on probe images: recall@1 per direction judged, recall@5 beside it."""
    checks = []
    for direction in ("i2t", "t2i"):
        for k in (1, 5):
            tag = f"val/probe_{direction}_r@{k}"
            if tag not in final:
                continue
            chance, colour = final.get(f"val/probe_chance_r@{k}"), final.get(f"val/probe_colour_only_r@{k}")
            references = _present(("chance", chance), ("colour-only", colour), ("start", start.get(tag)))
            bars = _identity_bars(chance, colour, start.get(tag)) if k == 1 else ()
            checks.append(Check(f"emoji identity {direction} r@{k}", final[tag], references, bars, tag=tag))
    return checks


def _identity_bars(chance: float | None, colour_only: float | None, start: float | None) -> tuple[Bar, ...]:
    """Above twice chance, the colour-only baseline and the start, whichever are known."""
    return _bars(
        None if chance is None else Bar(f"{CHANCE_FACTOR:g}x chance", CHANCE_FACTOR * chance,
                                        "at chance: the ViT does not tell the emoji apart"),
        None if colour_only is None else Bar("colour-only", colour_only,
                                             "no better than matching the background colour alone"),
        _above_start(start, "no better than before the stage trained"),
    )  # fmt: skip


def vlm_checks(start: Metrics, final: Metrics) -> list[Check]:
    """The image-use gap and the greedy captions' accuracy (background colour, any emoji, all emoji)."""
    checks = []
    if "val/image_use_gap" in final:
        gap = Bar(f"{MIN_IMAGE_USE_GAP:g}", MIN_IMAGE_USE_GAP, "the model ignores its images")
        references = _present(("start", start.get("val/image_use_gap")))
        value = final["val/image_use_gap"]
        checks.append(Check("image-use gap", value, references, (gap,), unit=" nats", tag="val/image_use_gap"))
    captions = [
        ("colour", "background colour", "the captions name the background colour no more often than chance"),
        ("emoji_any", "at least one emoji", "the captions name the scene's emoji no more often than chance"),
        ("emoji_all", "every emoji", ""),
    ]
    for key, what, failure in captions:
        tag = f"val/caption_{key}_acc"
        if tag not in final:
            continue
        chance = final.get(f"val/caption_{key}_chance")
        references = _present(("chance", chance), ("start", start.get(tag)))
        bars = _bars(Bar("chance", chance, failure)) if chance is not None and failure else ()
        checks.append(Check(f"captions naming {what}", final[tag], references, bars, tag=tag))
    return checks


def passkey_checks(start: Metrics, final: Metrics, extends_context: bool) -> list[Check]:
    """Passkey accuracy per length; the longest judged against its start in a stage that lengthens the context."""
    return _per_length_checks(
        "passkey", start, final, extends_context, "the longer context did not improve retrieval from it",
        lambda length: (("first token", final.get(f"val/passkey_first_token@{length}")),
                        ("later tokens", final.get(f"val/passkey_later_tokens@{length}"))),
    )  # fmt: skip


def copy_checks(start: Metrics, final: Metrics, extends_context: bool) -> list[Check]:
    """The copy check per length (share of a repeated span's ids right, its gain in nats beside it); the longest
    judged against its start in a stage that lengthens the context."""
    return _per_length_checks(
        "copy", start, final, extends_context, "the longer context did not improve copying from it",
        lambda length: (("gain", final.get(f"val/copy_gain@{length}")),
                        ("gain at start", start.get(f"val/copy_gain@{length}"))),
    )  # fmt: skip


def _per_length_checks(
    name: str,
    start: Metrics,
    final: Metrics,
    extends_context: bool,
    failure: str,
    beside: Callable[[int], tuple[tuple[str, float | None], ...]],
) -> list[Check]:
    """``val/<name>@<length>`` for each length logged, the longest judged against its start where the stage
    lengthens the context; printed next to each: ``val/<name>_chance``, its start, then ``beside(length)``."""
    lengths = sorted(int(tag.rpartition("@")[2]) for tag in final if _is_per_length(tag, name))
    checks = []
    for length in lengths:
        tag = f"val/{name}@{length}"
        judged = extends_context and length == lengths[-1]
        bars = _bars(_above_start(start.get(tag), failure)) if judged else ()
        chance = final.get(f"val/{name}_chance")
        references = _present(("chance", chance), ("start", start.get(tag)), *beside(length))
        checks.append(Check(f"{name}@{length}", final[tag], references, bars, tag=tag))
    return checks


def _is_per_length(tag: str, name: str) -> bool:
    return tag.startswith(f"val/{name}@") and tag.rpartition("@")[2].isdigit()


def extends_context(stage: Stage, earlier: Sequence[Stage]) -> bool:
    """Whether ``stage`` trains on longer rows or with another RoPE base than the last earlier stage with rows."""
    before = next((s for s in reversed(earlier) if s.get("seq_len") is not None), None)
    if before is None or stage.get("seq_len") is None:
        return False
    longer = int(stage["seq_len"]) > int(before["seq_len"])
    rope = stage.get("rope_base"), before.get("rope_base")
    return longer or (None not in rope and rope[0] != rope[1])


def stage_checks(stage: Stage, earlier: Sequence[Stage] = ()) -> list[Check]:
    """Every capability check of a stage from its manifest entry (``[]`` when it logged none or did not run).

    Args:
        stage: the stage's manifest entry.
        earlier: the entries of the stages before it in run order (to tell whether it lengthens the context).
    """
    start, final = stage.get("start_metrics") or {}, stage.get("final_metrics") or {}
    extends = extends_context(stage, earlier)
    checks = [*vit_checks(start, final), *vlm_checks(start, final), *passkey_checks(start, final, extends)]
    return with_file_bars(checks + copy_checks(start, final, extends), stage.get("bars") or {}, start, final)


def with_file_bars(checks: list[Check], bars: Mapping[str, float], start: Metrics, final: Metrics) -> list[Check]:
    """``checks`` with the pipeline file's ``bars`` (tag -> value to reach) joined to the checks of their tags; a
    tag no check covers becomes a check of its own (``not logged``, failing, when the stage has no such figure)."""
    checks = list(checks)
    for tag, value in bars.items():
        failure = (
            f"short of the pipeline file's bar for {tag}"
            if tag in final
            else f"the stage logged no {tag} (is the tag spelled as the logs have it?)"
        )
        bar = Bar(f"{value:g}", float(value), failure, reach=True)
        index = next((i for i, check in enumerate(checks) if check.tag == tag), None)
        if index is not None:
            checks[index] = replace(checks[index], bars=(*checks[index].bars, bar))
            continue
        references = _present(("start", start.get(tag)))
        checks.append(Check(tag, float(final.get(tag, math.nan)), references, (bar,), tag=tag))
    return checks


def pipeline_checks(stages: Sequence[Stage]) -> list[list[Check]]:
    """Each stage's checks, stages in run order."""
    return [stage_checks(stage, stages[:index]) for index, stage in enumerate(stages)]


def stage_passes(checks: Sequence[Check]) -> bool | None:
    """Whether every judged check passes; ``None`` when the stage has no judged check."""
    judged = [check.passed for check in checks if check.passed is not None]
    return all(judged) if judged else None


def format_checks(checks: Sequence[Check], indent: str = "   ") -> list[str]:
    """A stage's verdict line, then one line per check (none when it has no check)."""
    if not checks:
        return []
    judged = [check for check in checks if check.passed is not None]
    verdict = stage_passes(checks)
    if verdict is None:
        head = "capability: no judged check"
    else:
        passing = sum(bool(check.passed) for check in judged)
        head = f"capability: {MARKS[verdict]} ({passing} of {len(judged)} checks pass)"
    return [indent + head, *(indent + "   " + check.describe() for check in checks)]


def format_verdict_totals(stages: Sequence[Stage], checks: Sequence[Sequence[Check]]) -> str:
    """One line: how many checked stages pass their capability checks, and which fail which."""
    verdicts = [(stage, found, stage_passes(found)) for stage, found in zip(stages, checks)]
    judged = [(stage, found, verdict) for stage, found, verdict in verdicts if verdict is not None]
    if not judged:
        return "Capability checks: none recorded; the stages are judged by their headline metrics alone"
    passing = sum(verdict for _, _, verdict in judged)
    line = f"Capability checks: {passing} of {len(judged)} checked stages pass"
    failing = [
        f"{stage.get('name')} ({', '.join(check.label for check in found if check.passed is False)})"
        for stage, found, verdict in judged
        if not verdict
    ]
    return line + (f"; failing: {'; '.join(failing)}" if failing else "")
