"""benchmarks/emoji_identity_layers.py: the linear probe tells identity from colour; the script runs on checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import emoji_identity_layers  # noqa: E402


def test_the_probe_scores_identity_across_backgrounds_and_chance_for_colour_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat(5)  # 8 classes on 5 "backgrounds"
    background = torch.arange(5).repeat_interleave(8)
    train = background < 3
    prototypes = torch.randn(8, 16, generator=generator)
    identity = prototypes[labels] + 0.1 * torch.randn(40, 16, generator=generator)
    colour_only = torch.randn(5, 16, generator=generator)[background]  # the same for every class on a background
    assert emoji_identity_layers.linear_probe(identity, labels, train) == 1.0
    assert emoji_identity_layers.linear_probe(colour_only, labels, train) <= 1 / 8


def test_the_script_probes_the_vit_and_the_projector_of_stage_checkpoints(tiny_checkpoints) -> None:
    """On the probe images and, with ``--scenes``, on the emoji boxes of demo scenes."""
    results = emoji_identity_layers.main(
        ["--checkpoints", f"vit={tiny_checkpoints['vit']}", f"align={tiny_checkpoints['align']}", "--scenes", "8"]
    )
    assert set(results["vit"]) == {"vit", "vit_scenes"}
    assert set(results["align"]) == {"vit", "projector", "vit_scenes", "projector_scenes"}
    assert all(0.0 <= value <= 1.0 for row in (results["vit"], results["align"]) for value in row.values())
    assert results["chance"] == 1 / 64
