"""benchmarks/image_use_check.py: the image-use gap of a checkpoint, split by what the caption tokens name."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import image_use_check  # noqa: E402

from mm_lightning.demo import demo_tokenizer  # noqa: E402
from mm_lightning.demo.emoji_scenes import SceneConfig, emoji_name, vocabulary  # noqa: E402
from mm_lightning.tokenizer import load_tokenizer  # noqa: E402


def test_caption_tokens_are_told_apart_by_what_they_name(demo_emoji) -> None:
    tokenizer = load_tokenizer(demo_tokenizer("demo:emoji-scenes"))
    name = emoji_name(vocabulary(SceneConfig().vocab_size)[0])
    caption = f"a {name} at the top left on a blue background"
    kinds = image_use_check.token_kinds(tokenizer, caption)
    tokens = tokenizer.encode(caption, add_special_tokens=False)
    assert len(kinds) == len(tokens.ids) + 1 and kinds[-1] == "other"  # the EOD
    named = "".join(caption[start:end] for (start, end), kind in zip(tokens.offsets, kinds) if kind == "emoji")
    coloured = "".join(caption[start:end] for (start, end), kind in zip(tokens.offsets, kinds) if kind == "colour")
    assert named.strip() == name and coloured.strip() == "blue"
    assert "background" not in named + coloured  # the rest is "other"


def test_the_script_reports_the_gap_in_all_and_per_kind(tiny_checkpoints) -> None:
    results = image_use_check.main([str(tiny_checkpoints["align"]), "--batches", "1"])
    figures = results[str(tiny_checkpoints["align"])]
    for side in ("right", "mismatched"):
        assert set(figures[side]) == {"all", "emoji", "colour", "other"}
        assert all(math.isfinite(value) and value > 0 for value in figures[side].values())
