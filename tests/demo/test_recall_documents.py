"""Recall documents state numbers and later repeat each after the same words: the repeat is predictable only by
copying from the context, and the wording shares nothing with the passkey evaluation's template."""

import random
import re

from mm_lightning.demo.corpora import SOTU, read_corpus
from mm_lightning.demo.recall import RecallConfig, address_sentences, recall_document
from mm_lightning.eval.passkey import template_sentences

SENTENCES = address_sentences([record["text"] for record in read_corpus(SOTU)][:20])


KEY = re.compile(r"\b(?:number|shelf|marked|reads|ticket) (\d+)")  # the word before the key in each statement


def test_every_number_is_stated_then_repeated_after_the_same_words() -> None:
    config = RecallConfig(facts=(2, 3), passage_sentences=(0, 2), digits=(3, 5))
    rng = random.Random(0)
    for _ in range(50):
        document = recall_document(rng, SENTENCES, config)
        keys = list(KEY.finditer(document))
        numbers = [match.group(1) for match in keys]
        assert 4 <= len(keys) <= 6, document  # 2-3 facts, each stated twice
        assert all(numbers.count(number) == 2 and 3 <= len(number) <= 5 for number in numbers)
        for number in set(numbers):
            first, second = [match.start(1) for match in keys if match.group(1) == number]
            assert first < second
            assert document[:second].split()[-4:] == document[:first].split()[-4:]  # the same words lead to it
        assert "  " not in document and document == document.strip()


def test_documents_are_seeded_and_vary() -> None:
    docs = [recall_document(random.Random(seed), SENTENCES) for seed in (1, 1, 2)]
    assert docs[0] == docs[1] and docs[0] != docs[2]


def test_no_recall_document_shares_the_passkey_template() -> None:
    sentences = [sentence.lower() for sentence in template_sentences()]
    rng = random.Random(3)
    texts = [recall_document(rng, SENTENCES).lower() for _ in range(300)]
    assert not [s for s in sentences for text in texts if s in text]
