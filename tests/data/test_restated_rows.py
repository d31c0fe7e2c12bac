"""Restated rows: a share of training rows say their opening span again, the same rows on every run and rank,
validation rows never; bad settings refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mm_lightning.data import TextDataModule
from mm_lightning.data.restated_rows import check_restating, restate_opening
from mm_lightning.errors import ConfigError
from mm_lightning.prep.text import prepare_text_shards


def _restated_cut(block: torch.Tensor, row: torch.Tensor) -> int | None:
    """The ``m`` with ``row == block[:m] + block[:len - m]``, or None when ``row`` is ``block`` itself."""
    if torch.equal(row, block):
        return None
    cuts = [m for m in range(1, len(block)) if torch.equal(row, torch.cat([block[:m], block[: len(block) - m]]))]
    assert len(cuts) == 1, "a changed row must be the block restated at exactly one cut"
    return cuts[0]


def test_a_restated_row_says_its_opening_again_and_the_share_is_kept() -> None:
    generator = torch.Generator().manual_seed(0)
    blocks = [torch.randint(5, 300, (65,), generator=generator) for _ in range(400)]
    cuts = [_restated_cut(b, restate_opening(b, 0.5, (8, 24), seed=3)) for b in blocks]
    restated = [m for m in cuts if m is not None]
    assert 0.4 < len(restated) / len(blocks) < 0.6
    assert min(restated) >= 8 and max(restated) <= 24 and len(set(restated)) > 10
    again = [_restated_cut(b, restate_opening(b, 0.5, (8, 24), seed=3)) for b in blocks]
    assert again == cuts  # a function of the row and the seed: resumed runs and every rank agree
    other_seed = [_restated_cut(b, restate_opening(b, 0.5, (8, 24), seed=4)) for b in blocks]
    assert other_seed != cuts
    assert all(restate_opening(b, 0.0, (8, 24)) is b for b in blocks[:5])
    assert all(_restated_cut(b, restate_opening(b, 1.0, (8, 24))) is not None for b in blocks[:20])


@pytest.mark.parametrize(
    ("share", "span", "message"),
    [(1.5, (8, 16), "repeat_share"), (-0.1, (8, 16), "repeat_share"), (0.5, (0, 16), "repeat_span"),
     (0.5, (16, 8), "repeat_span"), (0.5, (8, 40), "seq_len / 2 = 32")],
)  # fmt: skip
def test_bad_restating_settings_are_refused(share: float, span: tuple[int, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_restating(share, span, seq_len=64)
    check_restating(0.0, (0, 0), seq_len=64)  # no share: the span is never read


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("restated")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    docs = [" ".join(rng.choices(words, k=rng.randint(20, 80))) for _ in range(300)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_text_shards([root / "corpus.jsonl"], root / "out", vocab_size=300, val_fraction=0.15, progress=False)
    return root / "out"


def test_text_datamodule_restates_training_rows_only(prepared: Path) -> None:
    def batches(share: float, split: str) -> torch.Tensor:
        dm = TextDataModule(str(prepared), seq_len=32, batch_size=4, repeat_share=share, repeat_span=(4, 16))
        dm.setup("fit")
        loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
        return torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], 1) for _, b in zip(range(10), loader)])

    plain, restated = batches(0.0, "train"), batches(0.5, "train")  # [40, 33] blocks, same order (same seed)
    cuts = [_restated_cut(p, r) for p, r in zip(plain, restated)]
    assert 8 <= sum(m is not None for m in cuts) <= 32 and all(4 <= m <= 16 for m in cuts if m is not None)
    assert torch.equal(batches(0.0, "val"), batches(1.0, "val"))
    dm = TextDataModule(str(prepared), seq_len=32, batch_size=4, repeat_share=1.0, repeat_span=(4, 16))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])  # still shifted rows
    with pytest.raises(ConfigError, match="repeat_span"):
        TextDataModule(str(prepared), seq_len=32, repeat_share=0.5, repeat_span=(4, 17))
