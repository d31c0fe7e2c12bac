"""Recall rows: recall documents packed into rows, as a mixture source, with a text corpus's tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mm_lightning.data.mixture.sources import SourceContext, SourceSpec, build_source
from mm_lightning.demo.recall import ITEMS, STATEMENTS
from mm_lightning.errors import ConfigError
from mm_lightning.tokenizer import eod_id


def _source(split: str, **options):
    spec = SourceSpec.from_config({"name": "recall", "kind": "recall_rows", "path": "demo:sotu", **options})
    return build_source(spec, SourceContext(split, seed=3, seq_len=256, patch_size=14, max_patches=16))


def test_rows_hold_recall_documents_whose_numbers_come_back(demo_sotu: Path) -> None:
    """Rows of ``text_len`` tokens, a pure function of the index; each whole document states its facts, then each
    again with the same number; validation rows of another seed; loss on every token."""
    train = _source("train", text_len=1025, facts=[2, 4], passages=[0, 1])
    rows = [train.sample(k) for k in range(3)]
    assert all(len(row.token_ids) == 1025 and row.loss_mask is None for row in rows)
    assert rows[0].token_ids == _source("train", text_len=1025, facts=[2, 4], passages=[0, 1]).sample(0).token_ids
    assert _source("val", text_len=1025, facts=[2, 4], passages=[0, 1]).sample(0).token_ids != rows[0].token_ids
    assert not train.multimodal and len(_source("val")) == 64 and len(train) == 65_536
    eod = eod_id(train.tokenizer)
    text = train.tokenizer.decode(rows[0].token_ids, skip_special_tokens=False)
    documents = text.split(train.tokenizer.id_to_token(eod))[:-1]  # the last one is cut at the row's end
    assert documents and rows[0].token_ids.count(eod) == len(documents)
    items = "|".join(map(re.escape, ITEMS))

    def pattern(template: str) -> re.Pattern:  # "The {item} ... {key}." stated or recalled ("... the {item} ...")
        body = re.escape(template[1:-1]).replace(re.escape("{item}"), f"({items})")
        return re.compile(f"(?i:{template[0]})" + body.replace(re.escape("{key}"), r"(\d{3,5})\."))

    patterns = [pattern(template) for template in STATEMENTS]
    for document in documents:
        facts = [match for pattern in patterns for match in pattern.findall(document)]
        assert 2 <= len(set(facts)) <= 4 and all(facts.count(fact) == 2 for fact in facts), document


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"facts": [0, 2]}, "facts must be \\[fewest, most\\] with 1 <= fewest <= most"),
        ({"passages": [3, 1]}, "passage_sentences must be \\[fewest, most\\]"),
        ({"facts": [2, 31]}, "facts may be at most 30"),
        ({"digits": 4}, "digits must be a pair of integers \\[fewest, most\\], got 4"),
        ({"mentions": [-1, 2]}, "mentions must be \\[fewest, most\\] with 0 <= fewest <= most"),
        ({"text_len": 1}, "text_len must be at least 2"),
        ({"gap": 3}, "unknown option"),
    ],
)
def test_bad_options_are_refused_naming_the_source(demo_sotu: Path, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _source("train", **options)
