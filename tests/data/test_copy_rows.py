"""Copy rows: random spans said twice after a random gap, in the text batch layout, with a text corpus's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm_lightning.data import CopyRowsDataModule
from mm_lightning.data.copy_rows import CopyRowsDataset
from mm_lightning.data.mixture.sources import SourceContext, SourceSpec, build_source
from mm_lightning.errors import ConfigError
from mm_lightning.tokenizer import SPECIAL_TOKENS, eod_id


def _documents(row: torch.Tensor, eod: int) -> list[list[int]]:
    parts, current = [], []
    for token in row.tolist():
        if token == eod:
            parts.append(current)
            current = []
        else:
            current.append(token)
    return parts  # whole documents only (the row's last, cut one, is left out)


def test_each_document_is_a_span_a_gap_and_the_span_again() -> None:
    dataset = CopyRowsDataset(num_rows=50, seq_len=256, span=16, gap=12, ids=(5, 400), eod_id=0, seed=1)
    gaps = set()
    for index in range(len(dataset)):
        row = dataset[index]
        assert row.shape == (257,) and torch.equal(row, dataset[index])  # a pure function of the index
        for document in _documents(row, eod=0):
            assert 32 <= len(document) <= 44 and document[:16] == document[-16:]
            assert all(5 <= token < 400 for token in document)
            gaps.add(len(document) - 32)
    assert gaps == set(range(13))  # the distance to the copy varies: a fixed look-back cannot solve the rows
    other = CopyRowsDataset(num_rows=1, seq_len=256, span=16, gap=12, ids=(5, 400), eod_id=0, seed=2)
    assert not torch.equal(other[0], dataset[0])


def test_decoys_put_pieces_of_the_span_in_its_gap_each_followed_by_a_wrong_id() -> None:
    dataset = CopyRowsDataset(num_rows=20, seq_len=512, span=16, gap=64, ids=(5, 4000), eod_id=0, seed=1, decoys=4)
    documents = [d for index in range(len(dataset)) for d in _documents(dataset[index], eod=0)]
    ends = 0  # decoys' last tokens: a token of the span, then an id the span does not go on with
    for document in documents:
        span, gap = document[:16], document[16:-16]
        assert document[-16:] == span and all(5 <= token < 4000 for token in document)
        after = dict(zip(span, span[1:]))  # token of the span -> the one after it (ids rarely repeat among 4,000)
        for k in range(len(gap) - 1):
            if gap[k] in after and gap[k + 1] != after[gap[k]]:
                ends += 1
            elif gap[k] in after and k + 2 < len(gap):  # a two-token piece: right once, then wrong
                assert gap[k + 2] != after.get(gap[k + 1])
    assert ends >= 2 * len(documents)  # up to 4 a gap (a slot shorter than its piece gets none)
    plain = CopyRowsDataset(num_rows=1, seq_len=512, span=16, gap=64, ids=(5, 4000), eod_id=0, seed=1)
    assert not torch.equal(plain[0], dataset[0])


def test_a_lead_puts_random_ids_and_decoys_before_the_span() -> None:
    """With ``lead``, each document opens with 0..lead random ids, so the span starts at varying places, and the
    decoys are shared between the lead-in and the gap: some lie farther back than the span, so the farthest one- or
    two-token match is not always the right one. The repeat's tokens after its first stay the predictable ones."""
    dataset = CopyRowsDataset(num_rows=30, seq_len=512, span=16, gap=48, ids=(5, 4000), eod_id=0, seed=1, decoys=4,
                              lead=48)  # fmt: skip
    starts, before, after = set(), 0, 0
    for index in range(len(dataset)):
        row, predictable = dataset.row(index)
        cursor = 0
        for document in _documents(row, eod=0):
            span = document[-16:]
            start = next(k for k in range(len(document) - 16) if document[k : k + 16] == span)
            starts.add(start)
            assert start <= 48 and len(document) - 32 - start <= 48
            mask = predictable[cursor : cursor + len(document)].tolist()
            assert mask == [False] * (len(document) - 15) + [True] * 15  # the repeat after its first token
            follows = dict(zip(span, span[1:]))
            wrong = [k for k in range(len(document) - 17) if document[k] in follows
                     and document[k + 1] != follows[document[k]] and not start <= k < start + 16]  # fmt: skip
            before += sum(k < start for k in wrong)
            after += sum(k > start for k in wrong)
            cursor += len(document) + 1
    assert len(starts) > 20 and min(starts) <= 2  # the span starts at varying places, now and then the first
    assert before > 20 and after > 20  # decoys on both sides of the span
    plain = CopyRowsDataset(num_rows=1, seq_len=512, span=16, gap=48, ids=(5, 4000), eod_id=0, seed=1, decoys=4)
    assert torch.equal(plain[0], CopyRowsDataset(num_rows=1, seq_len=512, span=16, gap=48, ids=(5, 4000), eod_id=0,
                                                 seed=1, decoys=4, lead=0)[0])  # fmt: skip


def test_a_lead_never_cuts_a_rows_first_repeat() -> None:
    """The gap is drawn before the lead-in, which takes only the room left: a row's first document keeps its whole
    repeat however long its gap, so the farthest copies (a needle ~1,000 tokens back) are trained as often as the
    near ones. A lead drawn first would cut most gaps near ``gap`` at the row's end, their repeats lost."""
    dataset = CopyRowsDataset(num_rows=200, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3,
                              decoys=16, lead=256)  # fmt: skip
    distances = []
    for index in range(len(dataset)):
        row, predictable = dataset.row(index)
        first = _documents(row, eod=0)[0]
        span = first[-32:]
        start = next(k for k in range(len(first) - 32) if first[k : k + 32] == span)
        assert predictable[len(first) - 31 : len(first)].all()  # the whole repeat (after its first token) is scored
        distances.append(len(first) - 32 - start)
    assert sum(d > 800 for d in distances) >= 0.15 * len(distances)  # uniform gaps: ~0.17 beyond 800


def test_a_min_gap_keeps_every_copy_far_back() -> None:
    """With ``min_gap`` every whole document's repeat lies at least ``span + min_gap`` tokens after its span (a long
    row trains far look-ups only); without it the rows are exactly those drawn before the option existed."""
    far = CopyRowsDataset(num_rows=100, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, decoys=16,
                          lead=256, min_gap=600)  # fmt: skip
    lengths = [len(doc) for index in range(len(far)) for doc in _documents(far[index], eod=0)]
    assert len(lengths) >= 100 and min(lengths) >= 64 + 600  # lead-in + span + gap + span: the gap is >= 600
    near = CopyRowsDataset(num_rows=100, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, decoys=16,
                           lead=256)  # fmt: skip
    assert min(len(doc) for index in range(len(near)) for doc in _documents(near[index], eod=0)) < 64 + 600
    for lead in (0, 256):
        old = CopyRowsDataset(num_rows=3, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, lead=lead)
        zero = CopyRowsDataset(num_rows=3, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3,
                               lead=lead, min_gap=0)  # fmt: skip
        assert all(torch.equal(old[i], zero[i]) for i in range(3))


def test_near_decoys_are_two_token_pieces_just_before_the_repeat() -> None:
    """``near_decoys=n``: the gap's last ``4 n`` ids are ``n`` slots ``[r, span[k - 1], span[k], wrong]`` with
    ``k >= 2``, so the nearest match before the repeat's ``span[k]`` is two tokens long and copies a wrong id; and
    ``near_decoys=0`` draws the rows it drew before."""
    dataset = CopyRowsDataset(num_rows=40, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, decoys=16,
                              lead=256, near_decoys=4)  # fmt: skip
    checked = 0
    for index in range(len(dataset)):
        for doc in _documents(dataset[index], eod=0):
            span, gap_end = doc[-32:], doc[-32 - 16 : -32]
            start = next(k for k in range(len(doc) - 32) if doc[k : k + 32] == span)
            if len(doc) - 64 - start < 16:  # a gap too short for the four slots gets none
                continue
            for slot in range(4):
                first, second, wrong = gap_end[4 * slot + 1 : 4 * slot + 4]
                k = next(k for k in range(2, 31) if span[k - 1 : k + 1] == [first, second])
                assert wrong != span[k + 1]
                checked += 1
    assert checked >= 4 * 40
    plain = CopyRowsDataset(num_rows=3, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, decoys=16,
                            lead=256)  # fmt: skip
    zero = CopyRowsDataset(num_rows=3, seq_len=1024, span=32, gap=944, ids=(5, 4000), eod_id=0, seed=3, decoys=16,
                           lead=256, near_decoys=0)  # fmt: skip
    assert all(torch.equal(plain[i], zero[i]) for i in range(3))
    assert not torch.equal(plain[0], dataset[0])


def test_datamodule_batches_with_the_corpus_tokenizer(demo_sotu: Path) -> None:
    dm = CopyRowsDataModule(tokenizer_from="demo:sotu", seq_len=128, batch_size=4, span=16, gap=8, val_rows=6)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == dm.tokenizer.get_vocab_size() == 8192
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "seq_ids", "position_ids"} and batch["input_ids"].shape == (4, 128)
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    ordinary = batch["input_ids"][batch["input_ids"] != 0]
    assert ordinary.min() >= len(SPECIAL_TOKENS) and ordinary.max() < 8192
    assert batch["seq_ids"][:, -1].min() >= 2  # three or more documents a row, attention kept inside each
    assert [b["input_ids"].shape[0] for b in dm.val_dataloader()] == [4, 2]


@pytest.mark.parametrize(
    "bad", [{"span": 0}, {"gap": -1}, {"seq_len": 20, "span": 10}, {"val_rows": 0}, {"decoys": -1}]
)
def test_bad_shapes_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match="CopyRowsDataModule needs"):
        CopyRowsDataModule(**bad)


def test_a_mixture_source_of_copy_rows(demo_sotu: Path) -> None:
    """The ``copy_rows`` kind: rows of ``text_len`` tokens in the corpus's vocabulary, each span said again within
    ``gap`` tokens; validation rows of another seed; a row that cannot hold a span twice refused, naming the source."""

    def source(split: str, **options):
        spec = SourceSpec.from_config({"name": "copies", "kind": "copy_rows", "path": "demo:sotu", **options})
        return build_source(spec, SourceContext(split, seed=3, seq_len=256, patch_size=14, max_patches=16))

    train = source("train", text_len=1025, span=24, gap=900)
    rows = [train.sample(k).token_ids for k in range(4)]
    assert all(len(row) == 1025 for row in rows) and train.tokenizer.get_vocab_size() == 8192
    assert rows[0] == source("train", text_len=1025, span=24, gap=900).sample(0).token_ids  # a pure function of k
    eod = eod_id(train.tokenizer)
    documents = [doc for row in rows for doc in _documents(torch.tensor(row), eod)]
    assert documents and all(doc[:24] == doc[-24:] and len(doc) - 48 <= 900 for doc in documents)
    assert max(len(doc) for doc in documents) > 300  # long gaps: copying across most of the row
    assert source("val", text_len=1025, span=24, gap=900).sample(0).token_ids != rows[0]
    assert not train.multimodal and len(source("val")) == 64
    with pytest.raises(ConfigError, match="source 'copies' \\(copy_rows\\) needs span >= 1"):
        source("train", text_len=41, span=24)
    with pytest.raises(ConfigError, match="unknown option"):
        source("train", repeat_share=0.5)
    decoyed = source("train", text_len=1025, span=24, gap=900, decoys=8).sample(0).token_ids
    assert len(decoyed) == 1025 and decoyed != rows[0]
    with pytest.raises(ConfigError, match="source 'copies' \\(copy_rows\\) needs decoys >= 0"):
        source("train", decoys=-2)
    with pytest.raises(ConfigError, match="needs decoys >= 0 and lead >= 0, got decoys=0, lead=-1"):
        source("train", lead=-1)
    led = source("train", text_len=1025, span=24, gap=900, decoys=8, lead=64).sample(0)
    assert len(led.token_ids) == 1025 and led.token_ids != decoyed
    assert train.sample(0).loss_mask is None  # loss on every token by default
    masked = source("train", text_len=1025, span=24, gap=900, loss="repeat").sample(0)
    assert masked.token_ids == rows[0] and len(masked.loss_mask) == 1025
    ends = [position for position, token in enumerate(masked.token_ids) if token == eod]
    assert sum(masked.loss_mask[: ends[0]]) == 23  # the first document's repeat, after its first token
    with pytest.raises(ConfigError, match="loss must be 'all' or 'repeat', got 'span'"):
        source("train", loss="span")
    far = source("train", text_len=1025, span=24, gap=900, min_gap=700).sample(0).token_ids
    assert min(len(doc) for doc in _documents(torch.tensor(far), eod)) >= 48 + 700
    with pytest.raises(ConfigError, match="needs 0 <= min_gap <= gap .* got min_gap=901, gap=900"):
        source("train", text_len=1025, span=24, gap=900, min_gap=901)
    with pytest.raises(ConfigError, match="seq_len >= 2 \\* span \\+ min_gap \\+ 1"):
        source("train", text_len=257, span=24, gap=900, min_gap=300)
    near = source("train", text_len=1025, span=24, gap=900, near_decoys=2).sample(0).token_ids
    assert len(near) == 1025 and near != rows[0]
    with pytest.raises(ConfigError, match="needs near_decoys >= 0, .* got near_decoys=-1, span=32"):
        source("train", near_decoys=-1)
    with pytest.raises(ConfigError, match="got near_decoys=1, span=3"):
        source("train", span=3, near_decoys=1)


def test_the_predictable_tokens_are_each_repeat_after_its_first() -> None:
    dataset = CopyRowsDataset(num_rows=20, seq_len=300, span=8, gap=40, ids=(5, 400), eod_id=0, seed=3, decoys=3)
    for index in range(len(dataset)):
        ids, predictable = dataset.row(index)
        assert torch.equal(ids, dataset[index]) and predictable.shape == ids.shape
        start = 0
        for document in _documents(ids, eod=0):
            marked = predictable[start : start + len(document)].nonzero().flatten().tolist()
            assert marked == list(range(len(document) - 7, len(document)))  # the repeat's tokens 2..8
            assert not predictable[start + len(document)]  # the end-of-document token
            start += len(document) + 1
