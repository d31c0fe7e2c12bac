"""Recall documents state numbers and later repeat each after the same words: the repeat is predictable only by
copying from the context, and the wording shares nothing with the passkey evaluation's template."""

import random
import re

from mm_lightning.demo.corpora import SOTU, read_corpus
from mm_lightning.demo.recall import MENTIONS, RecallConfig, address_sentences, recall_document
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


def test_mentions_use_a_key_s_cue_word_without_a_key_and_leave_the_facts_alone() -> None:
    """With ``mentions``, the word before one of the document's keys comes back followed by other words; every fact is
    still stated then recalled after the same words; without them a document is what it was before the option."""
    rng = random.Random(5)
    with_mentions = RecallConfig(facts=(2, 2), passage_sentences=(1, 2), mentions=(2, 3))
    for _ in range(50):
        document = recall_document(rng, SENTENCES, with_mentions)
        keys = list(KEY.finditer(document))
        cues = {match.group(0).split()[0] for match in keys}
        uses = [cue for cue, sentences in MENTIONS.items() for sentence in sentences
                for _ in range(document.count(sentence))]  # fmt: skip
        assert len(keys) == 4 and 2 <= len(uses) <= 3 and set(uses) <= cues, document
    plain = RecallConfig(facts=(2, 2), passage_sentences=(1, 2))
    assert recall_document(random.Random(9), SENTENCES, plain) == recall_document(
        random.Random(9), SENTENCES, RecallConfig(facts=(2, 2), passage_sentences=(1, 2), mentions=(0, 0))
    )
    assert [m for m in MENTIONS.values() for sentence in m if KEY.search(sentence)] == []


def test_documents_are_seeded_and_vary() -> None:
    docs = [recall_document(random.Random(seed), SENTENCES) for seed in (1, 1, 2)]
    assert docs[0] == docs[1] and docs[0] != docs[2]


def test_no_recall_document_shares_the_passkey_template() -> None:
    sentences = [sentence.lower() for sentence in template_sentences()]
    rng = random.Random(3)
    texts = [recall_document(rng, SENTENCES, RecallConfig(mentions=(0, 3))).lower() for _ in range(300)]
    assert not [s for s in sentences for text in texts if s in text]
