"""Gap filling of the joint stages' rows: text pieces close each row's end, as pure functions of the batch index."""

from __future__ import annotations

import pytest
import torch
from test_mixture import FAKE_SOURCES, FakeSource, FakeTrainer, assert_same_batches, fake_datamodule
from torch.utils.data import DataLoader

from mm_lightning.data.mixture.filler import GapFiller
from mm_lightning.data.mixture.packing import mixture_stats, pack_samples
from mm_lightning.data.mixture.plan import MixSample, epoch_item
from mm_lightning.data.mixture.sources import register_source, source_kind
from mm_lightning.errors import ConfigError
from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.tokenizer import EOD_ID, IMAGE_ID, PAD_ID

TRAIN_BASE, VAL_BASE = 1000, 2000  # the split text sources' tokens: train in [1000, 1100), val in [2000, 2100)


class SplitText:
    """Text documents whose tokens say which split they came from, each ended by EOD."""

    multimodal = False

    def __init__(self, name: str, split: str):
        self.name, self.base = name, TRAIN_BASE if split == "train" else VAL_BASE

    def __len__(self) -> int:
        return 23

    def sample(self, k: int) -> MixSample:
        item = epoch_item(k, 23, 0, self.name)
        return MixSample([self.base + (item + j) % 100 for j in range(3 + item % 9)] + [EOD_ID], source=self.name)


try:
    source_kind("split_text")
except ConfigError:
    register_source("split_text", multimodal=False)(lambda spec, context: SplitText(spec.name, context.split))


def filler_regions(batch: dict) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of each row's filler: the last ``filler_tokens[r]`` positions before the padding."""
    used = (batch["input_ids"] != PAD_ID).sum(1)  # [R] (the fake tokens are never the pad id)
    return [(r, int(u - f), int(u)) for r, (u, f) in enumerate(zip(used, batch["filler_tokens"]))]


def test_a_gap_is_filled_with_documents_of_their_own() -> None:
    pieces = [MixSample([20, 21, EOD_ID, 22]), MixSample([30, 31, 32, 33, 34, 35])]
    batch = pack_samples([MixSample([5, 6, 7, 8])], seq_len=8, filler=lambda row, m: pieces[m] if m < 2 else None)
    # the sample takes 3 positions; piece 0 takes 3 (two documents: its EOD ends one); piece 1 is cut to the last 2
    assert batch["input_ids"].tolist() == [[5, 6, 7, 20, 21, EOD_ID, 30, 31]]
    assert batch["labels"].tolist() == [[6, 7, 8, 21, EOD_ID, 22, 31, 32]]
    assert batch["seq_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert batch["filler_tokens"].tolist() == [5] and batch["sample_tokens"].tolist() == [3]


def test_filler_never_carries_images_and_stops_when_pieces_run_out() -> None:
    image = MixSample([IMAGE_ID, 5], [(torch.zeros(1, 12), (1, 1))])
    with pytest.raises(ValueError, match="filler is text"):
        pack_samples([MixSample([5, 6])], seq_len=6, filler=lambda row, m: image)
    short = pack_samples([MixSample([5, 6])], seq_len=6, rows_per_batch=2,
                         filler=lambda row, m: MixSample([40, 41]) if m < 2 else None)  # fmt: skip
    assert short["filler_tokens"].tolist() == [2, 2]  # two 1-position pieces a row, then padding
    assert short["input_ids"].tolist() == [[5, 40, 40, PAD_ID, PAD_ID, PAD_ID], [40, 40] + [PAD_ID] * 4]
    assert short["seq_ids"].tolist() == [[0, 1, 2, 3, 3, 3], [0, 1, 2, 2, 2, 2]]


def test_training_rows_are_full_and_the_samples_unchanged() -> None:
    filled, plain = fake_datamodule(), fake_datamodule(fill_gaps=False)
    for b in range(8):
        batch, bare = filled.batches("train", 0, None).batch(b), plain.batches("train", 0, None).batch(b)
        assert bool((batch["input_ids"] != PAD_ID).all()), b  # short fake text fits every gap
        assert int(batch["sample_tokens"].sum() + batch["filler_tokens"].sum()) == batch["input_ids"].numel()
        assert (bare["input_ids"] == PAD_ID).any() and int(bare["filler_tokens"].sum()) == 0
        for key in ("sample_index", "sample_source", "sample_multimodal", "sample_tokens", "grid_hw", "patches"):
            assert (batch[key] is None and bare[key] is None) or torch.equal(batch[key], bare[key]), key
        stats = mixture_stats(batch)  # the share counts samples; filler is reported apart
        assert stats["mix/multimodal_share_samples"] == mixture_stats(bare)["mix/multimodal_share_samples"]
        assert stats["mix/filler_tokens"] == float(batch["filler_tokens"].sum()) > 0
        for r, start, end in filler_regions(batch):  # filler targets count like any text, and never image tokens
            assert bool((batch["labels"][r, start:end] != IGNORE_INDEX).all())
            assert not bool((batch["input_ids"][r, start:end] == IMAGE_ID).any())


def test_filler_is_training_text_only() -> None:
    sources = [{"name": "prose", "kind": "split_text", "path": "-"}, FAKE_SOURCES[2]]
    dm = fake_datamodule(sources=sources, seq_len=48)
    seen = 0
    for b in range(10):
        batch = dm.batches("train", 0, None).batch(b)
        for r, start, end in filler_regions(batch):
            tokens = batch["input_ids"][r, start:end]
            assert bool(((tokens == EOD_ID) | ((tokens >= TRAIN_BASE) & (tokens < TRAIN_BASE + 100))).all())
            seen += end - start
    assert seen > 0
    for loader in dm.val_dataloader():  # validation is packed as before: no filler
        for batch in loader:
            assert int(batch["filler_tokens"].sum()) == 0
            assert not bool(((batch["input_ids"] >= TRAIN_BASE) & (batch["input_ids"] < TRAIN_BASE + 100)).any())


def test_filled_batches_survive_resume_workers_and_ranks() -> None:
    whole = list(fake_datamodule(train_batches=8).train_dataloader())
    assert sum(int(b["filler_tokens"].sum()) for b in whole) > 0
    assert_same_batches(list(fake_datamodule(train_batches=8, start_step=5).train_dataloader()), whole[5:])
    resumed = fake_datamodule(train_batches=8, num_workers=2)
    resumed.load_state_dict(fake_datamodule().state_dict() | {"stage_start_step": 100})
    resumed.trainer = FakeTrainer(global_step=103)
    assert_same_batches(list(resumed.train_dataloader()), whole[3:])
    workers = list(DataLoader(fake_datamodule().batches("train", 0, 8), batch_size=None, num_workers=2))
    assert_same_batches(workers, whole)
    # rank r of 2 builds global batches 2b + r: the same samples and the same filler as one rank's batch 2b + r
    for rank in range(2):
        wide = fake_datamodule(train_batches=4)
        wide.trainer = FakeTrainer(global_step=0, rank=rank, world_size=2)
        assert_same_batches(list(wide.train_dataloader()), whole[rank::2])


def test_gap_filler_counters_are_disjoint_and_weighted() -> None:
    text = (FakeSource("prose", False, 37), FakeSource("code", False, 11))
    filler = GapFiller(text, (3.0, 1.0), seed=3, max_rows=4, max_pieces=2)
    counters = [filler.counter(b, r, m) for b in range(5) for r in range(4) for m in range(2)]
    assert counters == list(range(40))
    with pytest.raises(ValueError, match="outside"):
        filler.counter(0, 4, 0)
    assert filler.piece(0, 0, 2) is None
    chosen = [filler.choose_source(c) for c in range(4000)]
    assert abs(chosen.count(0) / 4000 - 0.75) < 0.03
    with pytest.raises(ConfigError, match="must be text"):
        GapFiller((FakeSource("captions", True, 5),), (1.0,), seed=0, max_rows=1)


def test_no_text_source_or_fill_gaps_off_means_no_filler() -> None:
    assert fake_datamodule(fill_gaps=False).gap_filler() is None
    images = [FAKE_SOURCES[2], FAKE_SOURCES[3]]
    assert fake_datamodule(sources=images, share=None).gap_filler() is None
    assert fake_datamodule(rows_per_batch=9).gap_filler().max_rows == 9
