"""Which source each sample of a joint stage comes from: a pure function of the seed and the sample index.

The joint stages of the Kimi-VL recipe (Kimi Team 2025) mix text with multimodal data and raise the multimodal
share progressively. Drawing each sample by an independent coin flip lets the realised share wander by several
points over a few hundred samples; here a *quota rule* decides instead. With ``C(i)`` the cumulative scheduled
share of samples ``[0, i)`` (closed form, exact in rational arithmetic) and a seeded offset ``u`` in ``[0, 1)``,
``floor(C(i) + u)`` samples of ``[0, i)`` are multimodal, so sample ``i`` is multimodal exactly when that count
steps up at ``i + 1``. Any window of samples then holds its scheduled share to within one sample.

The choice among several sources of the same group (multimodal or text) chains the same rule with constant
shares: source 1 takes ``w1 / W`` of the group's samples, source 2 takes ``w2 / (W - w1)`` of the rest, and so on.
Each source thus has an exact running counter ``k`` (how many samples it gave before), computable in
O(number of sources) from the index alone, and it reads its items in order of its own seeded permutation, epoch
after epoch (:func:`epoch_item`): no item repeats before the source is exhausted, which a seeded hash per
sample could not promise. Nothing depends on workers, ranks or history, so every worker and rank agrees without
talking and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

from mm_lightning.errors import ConfigError
from mm_lightning.media.interleave import MixSample

_MASK64 = (1 << 64) - 1
SHAPES = ("linear", "step", "constant")


@dataclass
class ShareSchedule:
    """Multimodal share of samples as a function of the sample index within the stage."""

    start: float = 0.0
    """Share at sample 0 (unused by the ``constant`` shape)."""
    end: float = 0.4
    """Share at and after ``ramp_samples`` (the share throughout for the ``constant`` shape)."""
    ramp_samples: int = 10_000
    """Samples over which the share moves from ``start`` to ``end``."""
    shape: Literal["linear", "step", "constant"] = "linear"
    """``linear`` ramp; ``step``: ``steps`` equal rises, the last one at ``ramp_samples``; ``constant``: ``end``."""
    steps: int = 4
    """Number of equal rises of the ``step`` shape."""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"multimodal share {name}={value} is outside [0, 1]")
        if self.shape not in SHAPES:
            raise ConfigError(f"share shape {self.shape!r} is unknown; choose one of {', '.join(SHAPES)}")
        if self.ramp_samples < 0 or self.steps < 1:
            raise ConfigError(f"share ramp_samples={self.ramp_samples} must be >= 0 and steps={self.steps} >= 1")

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest share the schedule ever takes."""
        values = (self.end,) if self.shape == "constant" else (self.start, self.end)
        return min(values), max(values)


def constant_share(share: float) -> ShareSchedule:
    """A schedule that keeps ``share`` from the first sample on."""
    return ShareSchedule(start=share, end=share, ramp_samples=0, shape="constant")


def scheduled_share(schedule: ShareSchedule, index: int) -> float:
    """The multimodal share the schedule asks for at sample ``index`` (>= 0)."""
    ramp = schedule.ramp_samples
    if schedule.shape == "constant" or index >= ramp:
        return schedule.end
    if schedule.shape == "linear":
        return schedule.start + (schedule.end - schedule.start) * index / ramp
    stair = index * schedule.steps // ramp  # 0 .. steps - 1 inside the ramp
    return schedule.start + (schedule.end - schedule.start) * stair / schedule.steps


def cumulative_share(schedule: ShareSchedule, index: int) -> float:
    """``C(index)``: the sum of the scheduled shares of samples ``[0, index)``, in closed form."""
    return float(_exact_cumulative(schedule, index))


def multimodal_count(schedule: ShareSchedule, index: int, seed: int) -> int:
    """How many of samples ``[0, index)`` are multimodal: ``floor(C(index) + u)``, ``u`` seeded in [0, 1)."""
    return math.floor(_exact_cumulative(schedule, index) + unit_offset(seed, "multimodal-share"))


def is_multimodal(schedule: ShareSchedule, index: int, seed: int) -> bool:
    """The quota rule: sample ``index`` is multimodal when the multimodal count steps up at ``index + 1``."""
    return multimodal_count(schedule, index + 1, seed) > multimodal_count(schedule, index, seed)


def _exact_cumulative(schedule: ShareSchedule, index: int) -> Fraction:
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    start, end, ramp = Fraction(schedule.start), Fraction(schedule.end), schedule.ramp_samples
    if schedule.shape == "constant" or ramp == 0:
        return end * index
    n = min(index, ramp)
    if schedule.shape == "linear":  # sum_{j<n} start + (end - start) * j / ramp
        ramped = Fraction(n * (n - 1), 2 * ramp)
    else:  # sum_{j<n} floor(j * steps / ramp) / steps
        ramped = Fraction(floor_sum(n, ramp, schedule.steps, 0), schedule.steps)
    return start * n + (end - start) * ramped + end * max(0, index - ramp)


def floor_sum(n: int, m: int, a: int, b: int) -> int:
    """``sum_{i=0}^{n-1} floor((a * i + b) / m)`` for ``a, b >= 0``, ``m > 0``, in O(log m) (Euclid-like)."""
    total = 0
    while True:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        top = a * n + b
        if top < m:
            return total
        n, b, m, a = top // m, top % m, a, m


def stable_hash(*parts: int | str) -> int:
    """A 64-bit hash of ints and strings, identical in every process and on every machine (unlike ``hash``)."""
    state = 0x243F6A8885A308D3
    for part in parts:
        if isinstance(part, str):
            part = int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
        state = _splitmix64(state ^ _splitmix64(part & _MASK64))
    return state


def unit_offset(seed: int, *tags: int | str) -> Fraction:
    """A seeded offset in [0, 1), exact (a multiple of 2^-32)."""
    return Fraction(stable_hash(seed, *tags) >> 32, 1 << 32)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permute_index(index: int, n: int, key: int) -> int:
    """A keyed bijection of ``[0, n)`` in O(1) memory: a 4-round Feistel network with cycle walking."""
    if not 0 <= index < n:
        raise ValueError(f"index {index} is outside [0, {n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    value = index
    while True:  # the network permutes [0, 4^half); walking its cycle returns inside [0, n) in < 4 steps on average
        left, right = value >> half, value & mask
        for round_ in range(4):
            left, right = right, left ^ (stable_hash(key, round_, right) & mask)
        value = (left << half) | right
        if value < n:
            return value


def epoch_item(k: int, n: int, seed: int, name: str, shuffle: bool = True) -> int:
    """The item a source of ``n`` items gives as its ``k``-th sample: epoch ``k // n`` in a seeded order."""
    if n <= 0:
        raise ValueError(f"source {name!r} has no items")
    epoch, position = divmod(k, n)
    return permute_index(position, n, stable_hash(seed, name, epoch)) if shuffle else position


class MixtureSource(Protocol):
    """A named, indexable source of mixture samples (text blocks, image-caption pairs, videos, ...)."""

    name: str
    multimodal: bool

    def __len__(self) -> int: ...

    def sample(self, k: int) -> MixSample:
        """The source's ``k``-th sample, any ``k >= 0`` (the source wraps and permutes inside)."""
        ...


@dataclass(frozen=True)
class SourcePick:
    """Where sample ``index`` of a mixture comes from."""

    index: int
    """The global sample index within the stage."""
    source: int
    """Position of the source in the mixture's source list."""
    k: int
    """How many samples that source gave before this one (its running counter)."""
    multimodal: bool
    """Whether the source is multimodal."""


@dataclass(frozen=True)
class MixturePlan:
    """The source of every sample index: the share schedule between groups, then weights within a group."""

    names: tuple[str, ...]
    """Source names, unique."""
    weights: tuple[float, ...]
    """Relative weights (> 0) of the sources within their group (and between groups when there is no schedule)."""
    multimodal: tuple[bool, ...]
    """Which sources are multimodal."""
    schedule: ShareSchedule
    """Multimodal share of samples over the stage."""
    seed: int = 0
    """Seed of the offsets of every quota rule."""

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("a mixture needs at least one source")
        if not len(self.names) == len(self.weights) == len(self.multimodal):
            raise ValueError("names, weights and multimodal flags must have one entry per source")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"source names must be unique, got {list(self.names)}")
        bad = [f"{n}={w}" for n, w in zip(self.names, self.weights) if not w > 0]
        if bad:
            raise ConfigError(f"source weights must be > 0: {', '.join(bad)}")
        low, high = self.schedule.bounds
        if high > 0 and not any(self.multimodal):
            raise ConfigError(f"the multimodal share reaches {high} but no source is multimodal: {list(self.names)}")
        if low < 1 and all(self.multimodal):
            raise ConfigError(f"the multimodal share goes down to {low} but no source is text: {list(self.names)}")

    def pick(self, index: int) -> SourcePick:
        """The source of sample ``index`` and that source's counter: pure in (plan, index)."""
        count = multimodal_count(self.schedule, index, self.seed)
        multimodal = multimodal_count(self.schedule, index + 1, self.seed) > count
        members = [s for s, flag in enumerate(self.multimodal) if flag == multimodal]
        rank = count if multimodal else index - count  # position of the sample within its group
        remaining = Fraction(0)
        for s in members:
            remaining += Fraction(self.weights[s])
        for s in members[:-1]:
            share = Fraction(self.weights[s]) / remaining
            offset = unit_offset(self.seed, "source", self.names[s])
            taken = math.floor(share * rank + offset)
            if math.floor(share * (rank + 1) + offset) > taken:
                return SourcePick(index, s, taken, multimodal)
            rank -= taken
            remaining -= Fraction(self.weights[s])
        return SourcePick(index, members[-1], rank, multimodal)
