"""YaRN's frequency scaling (``ops/rope.py``): which pairs it slows, by how much, and its temperature."""

from __future__ import annotations

import math

import pytest
import torch

from mm_lightning.ops.rope import YaRN, rope_cos_sin


def plain_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def test_fast_pairs_keep_their_speed_and_pairs_that_never_turned_are_slowed_by_the_factor():
    base, yarn = 50_000.0, YaRN(4.0, 256)
    inv = plain_inv_freq(32, base)
    ratio = yarn.scale(inv, base) / inv
    turns = 256 * inv / (2 * math.pi)  # how often each pair turned over the trained rows
    assert ratio[turns > YaRN.FAST_TURNS].eq(1.0).all() and bool((turns > YaRN.FAST_TURNS).any())
    assert torch.allclose(ratio[turns < YaRN.SLOW_TURNS], torch.tensor(0.25)) and bool((turns < 1).any())
    assert bool((ratio[1:] <= ratio[:-1]).all())  # slower pairs are slowed at least as much: a monotone blend
    # after the switch a 4x longer row shows the slow pairs only angles the trained rows showed
    slow = turns < YaRN.SLOW_TURNS
    assert bool((1024 * yarn.scale(inv, base)[slow] <= 256 * inv[slow] + 1e-4).all())


def test_the_tables_carry_the_temperature_and_match_plain_rope_on_the_fast_pairs():
    positions = torch.arange(0, 1024, 16)[None]
    plain_cos, plain_sin = rope_cos_sin(positions, 32, 50_000.0, torch.float32)
    cos, sin = rope_cos_sin(positions, 32, 50_000.0, torch.float32, YaRN(4.0, 256))
    magnitude = 0.1 * math.log(4.0) + 1.0
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, magnitude**2))
    torch.testing.assert_close(cos[..., 0] / magnitude, plain_cos[..., 0])  # the fastest pair: unchanged
    torch.testing.assert_close(sin[..., 15] / magnitude, (plain_sin[..., 15].asin() / 4).sin())  # the slowest: 1/4


@pytest.mark.parametrize(("factor", "original_len"), [(1.0, 256), (0.5, 256), (4.0, 0)])
def test_yarn_refuses_a_factor_that_does_not_lengthen(factor, original_len):
    with pytest.raises(ValueError, match="factor > 1"):
        YaRN(factor, original_len)
