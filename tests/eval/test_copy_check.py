"""The copy check: probe rows (a random span said again at the row's end), scoring a model that copies and ones that
do not, the callback, and its verdict (judged at the longest length where a stage lengthens the context)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mm_lightning.callbacks import CopyCheck
from mm_lightning.errors import ConfigError
from mm_lightning.eval.copy_check import COMMON_IDS, copy_chance, copy_probe_rows, copy_scores, probe_ids
from mm_lightning.models.registry import build_backbone
from mm_lightning.pipeline.verdict import pipeline_checks, stage_passes
from mm_lightning.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS

VOCAB = 4000


class Tok:
    """All the check reads of a tokenizer: its size (the special ids lie below the ordinary ones)."""

    def __init__(self, vocab: int = VOCAB):
        self.vocab = vocab

    def get_vocab_size(self) -> int:
        return self.vocab


class Induction(torch.nn.Module):
    """An exact induction head: at each position, the token that followed the latest earlier occurrence of the last two
    tokens, else of the current one (uniform where there is neither), so it copies a repeated span from any depth and
    nothing else."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.lm_head = torch.nn.Identity()  # the scorer projects the scored positions only, as on an LLM

    def forward(self, input_ids=None, **_):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for row, ids in enumerate(input_ids.tolist()):
            seen: dict[tuple[int, ...], int] = {}
            for t, token in enumerate(ids):
                pair = (ids[t - 1], token) if t else None
                earlier = seen.get(pair, seen.get((token,)))
                if earlier is not None:
                    logits[row, t, ids[earlier + 1]] = 20.0
                seen[(token,)] = t
                if pair is not None:
                    seen[pair] = t
        return self.lm_head(logits)


class ContextBag(torch.nn.Module):
    """Favours every token it has seen earlier in the row, in no order: a unigram cache, not copying."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, **_):
        seen = torch.nn.functional.one_hot(input_ids, VOCAB).float().cumsum(1)  # [B, T, vocab]: counts so far
        return 5.0 * seen.clamp(max=1)


def test_each_row_ends_with_a_shuffled_span_then_a_repeated_one_from_its_own_depth_in_the_common_ids():
    ids = copy_probe_rows(Tok(), length=96, rows=5, span=8, seed=1)
    assert ids.shape == (5, 96) and ids.min() >= MIN_VOCAB_SIZE and ids.max() < MIN_VOCAB_SIZE + COMMON_IDS
    starts = []
    for row in ids:
        found = [s for s in range(96 - 8) if torch.equal(row[s : s + 8], row[-8:])]
        assert found, row
        starts.append(found[0])
        following = row[found[0] + 8 : found[0] + 16]  # B, right after A, comes back shuffled before A's repeat
        assert sorted(row[-16:-8].tolist()) == sorted(following.tolist())
        assert not torch.equal(row[-16:-8], following)
    assert starts == [0, 16, 32, 48, 64]  # spread from the start to 4 spans before the end
    assert torch.equal(ids, copy_probe_rows(Tok(), length=96, rows=5, span=8, seed=1))  # the same rows every time
    assert not torch.equal(ids, copy_probe_rows(Tok(), length=96, rows=5, span=8, seed=2))
    # the first 1,000 merges (no special id, no byte), or every ordinary id of a tokenizer with fewer
    assert probe_ids(Tok()) == (MIN_VOCAB_SIZE, MIN_VOCAB_SIZE + COMMON_IDS)
    assert probe_ids(Tok(400)) == (len(SPECIAL_TOKENS), 400)


def test_a_copier_scores_one_and_gains_nats_and_models_that_do_not_copy_score_chance():
    copier = copy_scores(Induction(), Tok(), [64, 200], rows=4, span=8)
    assert set(copier) == {64, 200}
    assert copy_scores(Induction(), Tok(), [64, 200], rows=4, span=8, batch_tokens=200) == copier  # a row a forward
    for score in copier.values():
        assert score.copy > 0.9 and score.gain > 5.0  # ln(1000) ~ 6.9 nats on the random ids, ~0 on the repeat
    bag = copy_scores(ContextBag(), Tok(), [64, 200], rows=8, span=8)  # favours what it has seen, in no order
    assert all(score.copy < 0.2 and abs(score.gain) < 0.5 for score in bag.values()), bag
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", n_layers=1, vocab_size=VOCAB)  # untrained: it cannot copy
    fresh = copy_scores(llm, Tok(), [64], rows=8, span=8)[64]
    assert fresh.copy < 0.05 and abs(fresh.gain) < 0.5
    assert copy_chance(Tok()) == pytest.approx(1 / COMMON_IDS)


def test_bad_probe_shapes_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"length >= 4 \* span"):
        copy_probe_rows(Tok(), length=20, rows=2, span=8)
    with pytest.raises(ConfigError, match="CopyCheck needs rows >= 1"):
        CopyCheck(lengths=[256], rows=0)
    with pytest.raises(ConfigError, match="at least one length"):
        CopyCheck(lengths=[])


def test_the_callback_logs_copy_and_gain_per_length_with_chance():
    reported = []
    module = SimpleNamespace(llm=Induction(), report_validation=lambda m, headline: reported.append((m, headline)))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=Tok()))
    CopyCheck(lengths=[64, 128], rows=2, span=8).on_validation_epoch_end(trainer, module)
    ((metrics, headline),) = reported
    assert headline == "val/copy@64"
    assert set(metrics) == {"val/copy@64", "val/copy_gain@64", "val/copy@128", "val/copy_gain@128", "val/copy_chance"}
    assert metrics["val/copy@128"] > 0.9 and metrics["val/copy_chance"] == pytest.approx(1 / COMMON_IDS)
    with pytest.raises(ConfigError, match="tokenizer"):
        CopyCheck().on_validation_epoch_end(SimpleNamespace(datamodule=None), module)


def entry(name, start, final, **more):
    return {"name": name, "status": "finished", "start_metrics": start, "final_metrics": final, **more}


def test_the_copy_is_judged_at_the_longest_length_where_the_context_grows():
    start = {"val/copy@256": 0.6, "val/copy@1024": 0.1, "val/copy_gain@1024": 0.4}
    final = {"val/copy@256": 0.7, "val/copy@1024": 0.1, "val/copy_gain@1024": 0.5, "val/copy_chance": 1e-4}
    text = entry("text", start, final, seq_len=256, rope_base=50000)
    long = entry("long", start, final, seq_len=1024, rope_base=800000)
    text_checks, long_checks = pipeline_checks([text, long])
    assert stage_passes(text_checks) is None  # shown, not judged
    assert [check.label for check in long_checks] == ["copy@256", "copy@1024"]
    assert long_checks[1].describe() == (
        "FAIL copy@1024 0.1 (chance 0.0001, start 0.1, gain 0.5, gain at start 0.4; needs > start): the longer "
        "context did not improve copying from it"
    )
    better = entry("long", start, final | {"val/copy@1024": 0.4}, seq_len=1024, rope_base=800000)
    assert stage_passes(pipeline_checks([text, better])[1]) is True
