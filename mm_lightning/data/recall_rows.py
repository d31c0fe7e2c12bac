"""Recall rows: rows packed with recall documents, the look-ups in words that copy rows give in random ids.

A recall document (:mod:`mm_lightning.demo.recall`) states a few facts, each a random number after a phrase, between
passages of a State of the Union address, then states each again in the same words: the repeated number is predictable
only by finding the phrase's first occurrence and copying what followed. Copy rows
(:mod:`~mm_lightning.data.copy_rows`) teach the copy on random ids; these rows teach the same look-up on words, whose
tokens follow each other and a passage's other words, as the passkey's question does. With both, a long-context
stage trains look-ups at its new length (README, "Why the passkey stays at 0", (14)-(17)).

Row ``i`` is a pure function of ``(seed, i)``: documents drawn from ``random.Random`` seeded by both, tokenized, an
EOD after each, packed back to back and cut at ``seq_len + 1`` tokens, so every rank and a resumed run see the
same rows. The documents' wording shares no sentence with the passkey evaluation's template
(``tests/eval/test_passkey.py`` checks it).
"""

from __future__ import annotations

import random
from functools import cached_property
from typing import Any

from torch import Tensor, tensor
from torch.utils.data import Dataset

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo.corpora import SOTU, read_corpus
from mm_lightning.demo.recall import ITEMS, RecallConfig, address_sentences, recall_document
from mm_lightning.errors import ConfigError


def check_recall_config(config: RecallConfig, where: str) -> None:
    """A clear ``ConfigError`` (naming ``where``) for fact, passage or digit ranges no document can have."""
    for name in ("facts", "passage_sentences", "digits", "mentions"):
        low, high = getattr(config, name)
        least = 0 if name in ("passage_sentences", "mentions") else 1
        if not least <= low <= high:
            raise ConfigError(f"{where}: {name} must be [fewest, most] with {least} <= fewest <= most, "
                              f"got {[low, high]}")  # fmt: skip
    if config.facts[1] > len(ITEMS):
        raise ConfigError(f"{where}: facts may be at most {len(ITEMS)} (one item each), got {config.facts[1]}")


class RecallRowsDataset(Dataset):
    """``num_rows`` rows of ``seq_len + 1`` token ids, each packed with recall documents (an EOD after each)."""

    def __init__(self, tokenizer: Any, num_rows: int, seq_len: int, seed: int, config: RecallConfig) -> None:
        self.tokenizer, self.num_rows, self.seq_len, self.seed, self.config = tokenizer, num_rows, seq_len, seed, config
        self.eod_id = tokenizer_lib.eod_id(tokenizer)

    @cached_property
    def sentences(self) -> list[list[str]]:
        """The packaged addresses cut into sentences, the passages between the facts (read on first use)."""
        return address_sentences([record["text"] for record in read_corpus(SOTU)])

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> Tensor:
        """Row ``index``: ``[seq_len + 1]`` ids."""
        rng = random.Random(self.seed * 1_000_003 + index)
        ids: list[int] = []
        while len(ids) <= self.seq_len:
            text = recall_document(rng, self.sentences, self.config)
            ids += [*tokenizer_lib.encode(self.tokenizer, text), self.eod_id]
        return tensor(ids[: self.seq_len + 1])
