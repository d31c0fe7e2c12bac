"""Recall documents: text whose numbers can only be predicted by finding where the document said them first.

Web text refers back to itself: an order number in a confirmation mail comes back in its last line, a table's
figures are quoted in the paragraph below it. Such text is what teaches a language model to copy from its context
(induction heads, Olsson et al. 2022), the ability a passkey test measures. A recall document states a few facts,
each an arbitrary number after a phrase, between passages of a State of the Union address, and later states each
fact again in the same words, in another order::

    Storeroom notes.
    <passage> The tin of nails was logged under number 48213. <passage> The brass lamp was logged under number 907.
    <passage> As written above, the brass lamp was logged under number 907. <passage> ...

The numbers are random, so a model predicts a repeated one only by matching the phrase before it with its first
occurrence and copying what followed: nothing in the rest of the corpus rewards that as directly. With
``mentions``, a document also uses the word before a key elsewhere, followed by other words ("The top shelf holds
nothing but dust."), before the facts, between them or near a recall: as in web text, the last word alone then
points at the wrong place as often as the right one, and only the longer match finds the number. (The passkey's
question ends on a word its intro used once before, followed by another word; without them the last word of a
recall here always leads to a fact.) The wording is
this project's own and shares no sentence with the passkey evaluation's template (``tests/eval/test_passkey.py``
checks every demo corpus), so the evaluation still measures a skill rather than a memorised prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

TITLES = ("Storeroom notes.", "Inventory, second floor.", "Shipping record.", "Lost and found ledger.",
          "Workshop log.", "Archive register.")  # fmt: skip
ITEMS = (
    "brass lamp", "tin of nails", "blue kettle", "wool blanket", "pocket watch", "oak chair", "glass jar",
    "silver spoon", "rope ladder", "paper kite", "copper pot", "leather boot", "iron key", "garden hose",
    "bird cage", "music box", "flower vase", "tool chest", "sewing kit", "straw hat", "clay bowl", "fishing net",
    "chess set", "wall clock", "sea chart", "candle box", "rain coat", "tea tin", "bread knife", "bell jar",
)  # fmt: skip
STATEMENTS = (
    "The {item} was logged under number {key}.",
    "We put the {item} on shelf {key}.",
    "The crate for the {item} is marked {key}.",
    "The tag on the {item} reads {key}.",
    "The {item} left with ticket {key}.",
)
RECALLS = ("As written above, ", "To repeat, ", "For the record, ", "Again, ", "Note that ")
MENTIONS = {  # the word before each statement's key, used elsewhere in a sentence of its own, followed by other words
    "number": ("Nobody kept count of the number of visitors.", "A number of boxes arrived late.",
               "The number on the door was painted over.", "That number rose every year."),
    "shelf": ("The top shelf holds nothing but dust.", "One shelf gave way last winter.",
              "Every shelf was dusted on Friday.", "A new shelf went up by the window."),
    "marked": ("Some boxes were marked fragile.", "The path is marked with white stones.",
               "Each crate is marked in red ink.", "The floor was marked by old boots."),
    "reads": ("The sign by the gate reads closed.", "The clerk reads every label twice.",
              "The old ledger reads like a diary.", "The note on the wall reads thank you."),
    "ticket": ("A ticket office opened by the stairs.", "Keep each ticket stub in the drawer.",
               "The ticket price went up in spring.", "His ticket was lost in the rain."),
}  # fmt: skip


@dataclass(frozen=True)
class RecallConfig:
    """The shape of recall documents."""

    facts: tuple[int, int] = (1, 3)
    """Fewest and most facts a document states (each recalled once)."""
    passage_sentences: tuple[int, int] = (1, 4)
    """Fewest and most address sentences in each passage between two statements."""
    digits: tuple[int, int] = (3, 5)
    """Fewest and most digits of a number."""
    mentions: tuple[int, int] = (0, 0)
    """Fewest and most sentences that use the word before one of the document's keys without a key after it."""


def address_sentences(addresses: Sequence[str]) -> list[list[str]]:
    """Each address cut into sentences (a full stop, question or exclamation mark and a space end one)."""
    return [[s.strip() for s in re.split(r"(?<=[.?!])\s+", " ".join(text.split())) if s.strip()] for text in addresses]


def recall_document(rng: random.Random, sentences: list[list[str]], config: RecallConfig = RecallConfig()) -> str:
    """One recall document: a title, facts stated between passages of one address, then each fact again.

    Args:
        rng: the source of every choice (a document is a function of its state).
        sentences: addresses cut into sentences (:func:`address_sentences`).
        config: how many facts, how long the passages, how many digits.
    """
    address = rng.choice([s for s in sentences if len(s) > 8])
    cursor = rng.randrange(len(address))

    def passage() -> str:
        nonlocal cursor
        count = rng.randint(*config.passage_sentences)  # 0: the statements follow each other
        taken = [address[(cursor + k) % len(address)] for k in range(count)]
        cursor = (cursor + count) % len(address)
        return " ".join(taken)

    count = rng.randint(*config.facts)
    items = rng.sample(ITEMS, count)
    facts = [rng.choice(STATEMENTS).format(item=item, key=_number(rng, config.digits)) for item in items]
    order = rng.sample(range(count), count)
    parts = [rng.choice(TITLES)]
    for fact in facts:
        parts += [passage(), fact]
    for index in order:
        recall = rng.choice(RECALLS) + facts[index][0].lower() + facts[index][1:]
        parts += [passage(), recall]
    parts.append(passage())
    if config.mentions != (0, 0):  # drawn only when asked for, so documents without them stay as they were
        cues = [fact.rsplit(" ", 2)[-2] for fact in facts]  # "... logged under number 48213." -> "number"
        for _ in range(rng.randint(*config.mentions)):
            parts.insert(rng.randint(1, len(parts)), rng.choice(MENTIONS[rng.choice(cues)]))
    return " ".join(part for part in parts if part)


def _number(rng: random.Random, digits: tuple[int, int]) -> str:
    length = rng.randint(*digits)
    return str(rng.randrange(10 ** (length - 1), 10**length))
