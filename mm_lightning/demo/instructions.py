"""Demo instruction data for supervised fine-tuning: questions about emoji scenes, each with one short, exact answer.

``demo:emoji-chat`` holds conversations about the scenes of :mod:`mm_lightning.demo.emoji_scenes`: the first user
turn shows the scene's image and asks a question; one to three question-answer turns follow, each of another kind:

====================  ================================================  ===================================
kind                  a question (several phrasings of each)            answer
====================  ================================================  ===================================
``background``        What colour is the background?                    ``blue``
``count``             How many emoji are there?                         ``one`` / ``two`` / ``three``
``presence``          Is there a bee?                                   ``yes`` / ``no`` (half each)
``place``             What is at the top left? / Where is the bee?      ``a red apple`` / ``nothing`` /
                                                                        ``at the top left``
``relation``          Which emoji is above the bee?                     ``a red apple``
``order``             Which emoji is in the middle?                     ``a bee``
====================  ================================================  ===================================

``place`` asks about a one-emoji scene (a place without the emoji is answered ``nothing``), ``relation`` about two
emoji, ``order`` about three in a row or a column. A share of the conversations is text only: the first question
comes after the scene's caption in words ("A picture shows a red apple above a bee on a blue background."), and its
answers are tagged ``text-<kind>``. Everything is a deterministic function of ``(seed, split, index)``; the val
split draws its scenes from the scenes' own val split, so its compositions are never seen in training (nor in the
``demo:emoji-scenes`` train split). Conversation ``i`` shows scene ``SCENE_OFFSET + i`` of its split, past the scenes
the other demos use.

The shards have the layout ``mm-lightning prepare chat`` writes (:mod:`mm_lightning.prep.chat`): records
``{"messages": JSON of mm_lightning.chat.messages_to_json, "images": packed PNG bytes, "source"}``, tokenized at load
time with the text demo's tokenizer. Nothing here imports Lightning.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from litdata.streaming.writer import BinaryWriter

from mm_lightning.chat import Message, message, messages_to_json
from mm_lightning.demo.corpora import DEMO_PREFIX, build_once, cache_root
from mm_lightning.demo.emoji_scenes import (
    PLACES,
    SPLITS,
    Scene,
    SceneConfig,
    article,
    emoji_name,
    generate_scene,
    render_scene,
    vocabulary,
)
from mm_lightning.errors import ConfigError
from mm_lightning.media.images import encode_image
from mm_lightning.media.interleave import pack_blobs

SCENE_OFFSET = 2_000_000
"""Conversation ``i`` shows scene ``SCENE_OFFSET + i``: the image-text demo and the caption corpus use lower ones."""
NUMBERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class DemoChat:
    """A generated instruction corpus and its sizes."""

    version: str
    """Bumped whenever the questions, the scenes or the sizes change, so stale caches are not reused."""
    train: int = 4096
    """Conversations in the train split."""
    val: int = 256
    """Conversations in the val split (scene compositions never seen in train)."""
    seed: int = 0
    """Seed of the questions, phrasings and turn counts."""
    text_only_share: float = 0.125
    """Share of conversations without the image (the scene's caption in words instead)."""
    max_turns: int = 3
    """Most question-answer turns in a conversation (at least one)."""


DEMO_CHATS = {"emoji-chat": DemoChat(version="v3")}  # v3: the scenes' v3


@dataclass(frozen=True)
class Conversation:
    """One generated conversation and the scene it is about."""

    messages: list[Message]
    scene: Scene
    with_image: bool
    """Whether the first user turn shows the scene (image 0); False: its caption in words."""


# --- questions ----------------------------------------------------------------------------------------------------

Question = tuple[str, str, str]  # (kind, question, answer)

BACKGROUND = ("What colour is the background?", "What is the background colour?", "What color is the background?",
              "Which colour is the background?")  # fmt: skip
COUNT = ("How many emoji are there?", "How many emoji are in the picture?", "How many emoji can you see?",
         "Count the emoji.")  # fmt: skip
PRESENCE = ("Is there {}?", "Is there {} in the picture?", "Can you see {}?", "Does the picture show {}?")
AT_PLACE = ("What is {}?", "Which emoji is {}?", "What do you see {}?")
WHERE = ("Where is the {}?", "Where is the {} in the picture?", "Where can you see the {}?")
RELATIVE = ("Which emoji is {} the {}?", "What is {} the {}?")
IN_LINE = ("Which emoji is {}?", "What is {}?")
RELATIONS = {"vertical": ("above", "below"), "horizontal": ("to the left of", "to the right of")}
ENDS = {"row": ("on the far left", "on the far right"), "column": ("at the top", "at the bottom")}


def _name(scene: Scene, position: int) -> str:
    return emoji_name(scene.sprites[position])


def _background(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    return "background", rng.choice(BACKGROUND), scene.background


def _count(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    return "count", rng.choice(COUNT), NUMBERS[len(scene.sprites)]


def _presence(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    present = rng.random() < 0.5
    sprite = rng.choice(scene.sprites if present else [s for s in vocab if s not in scene.sprites])
    return "presence", rng.choice(PRESENCE).format(article(emoji_name(sprite))), "yes" if present else "no"


def _place(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    """One emoji: what is at a place (the emoji or ``nothing``), or where the emoji is."""
    layout = scene.composition.split(":")[0]
    place = PLACES[int(layout[-2]), int(layout[-1])]
    if rng.random() < 1 / 3:
        return "place", rng.choice(WHERE).format(_name(scene, 0)), place
    asked = place if rng.random() < 0.5 else rng.choice([p for p in PLACES.values() if p != place])
    answer = article(_name(scene, 0)) if asked == place else "nothing"
    return "place", rng.choice(AT_PLACE).format(asked), answer


def _relation(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    """Two emoji, stored top/left first: which one is above / below / left / right of the other."""
    before, after = RELATIONS[scene.composition.split(":")[0]]
    anchor = rng.randrange(2)  # ask about the one related to the emoji at `anchor`
    relation = after if anchor == 0 else before
    question = rng.choice(RELATIVE).format(relation, _name(scene, anchor))
    return "relation", question, article(_name(scene, 1 - anchor))


def _order(rng: random.Random, scene: Scene, vocab: tuple[int, ...]) -> Question:
    """Three emoji in a row or column: which one is first, in the middle or last."""
    first, last = ENDS[scene.composition.split(":")[0]]
    position = rng.randrange(3)
    where = (first, "in the middle", last)[position]
    return "order", rng.choice(IN_LINE).format(where), article(_name(scene, position))


_LAYOUT_QUESTIONS: dict[int, Callable[[random.Random, Scene, tuple[int, ...]], Question]] = {
    1: _place,
    2: _relation,
    3: _order,
}


def scene_questions(rng: random.Random, scene: Scene, vocab: tuple[int, ...], count: int) -> list[Question]:
    """``count`` questions about ``scene``, each of another kind, in a random order."""
    kinds = [_background, _count, _presence, _LAYOUT_QUESTIONS[len(scene.sprites)]]
    return [ask(rng, scene, vocab) for ask in rng.sample(kinds, min(count, len(kinds)))]


# --- conversations ------------------------------------------------------------------------------------------------


def generate_conversation(split: str, index: int, demo: DemoChat = DEMO_CHATS["emoji-chat"]) -> Conversation:
    """Conversation ``index`` of ``split``: a deterministic function of ``(demo.seed, split, index)``."""
    config = SceneConfig()  # the scenes' own seed and held-out compositions
    scene = generate_scene(config, split, SCENE_OFFSET + index)
    rng = random.Random(f"chat-{demo.seed}-{split}-{index}")
    with_image = rng.random() >= demo.text_only_share
    questions = scene_questions(rng, scene, vocabulary(config.vocab_size, config.seed), rng.randint(1, demo.max_turns))
    messages = []
    for turn, (kind, question, answer) in enumerate(questions):
        if turn > 0:
            messages.append(message("user", question))
        elif with_image:
            messages.append(message("user", 0, question))
        else:
            messages.append(message("user", f"A picture shows {scene.caption}. {question}"))
        messages.append(message("assistant", answer, tag=kind if with_image else f"text-{kind}"))
    return Conversation(messages, scene, with_image)


def chat_record(conversation: Conversation, source: str) -> dict:
    """The shard record of a conversation (the layout of :mod:`mm_lightning.prep.chat`)."""
    images = [encode_image(render_scene(conversation.scene))] if conversation.with_image else []
    return {"messages": json.dumps(messages_to_json(conversation.messages)), "images": pack_blobs(images),
            "source": source}  # fmt: skip


def chat_records(demo: DemoChat, split: str, count: int) -> Iterator[dict]:
    """The records of conversations ``0 .. count - 1`` of ``split``."""
    for index in range(count):
        yield chat_record(generate_conversation(split, index, demo), f"emoji-chat/{split}/{index}")


def write_chat_demo(demo: DemoChat, out: Path, counts: dict[str, int] | None = None) -> Path:
    """Write ``out/{train,val}/`` and ``prep_summary.json``; ``counts``: conversations per split (default: the demo)."""
    counts = counts or {"train": demo.train, "val": demo.val}
    for split in SPLITS:
        writer = BinaryWriter(str(out / split), chunk_bytes="8MB")
        for index, record in enumerate(chat_records(demo, split, counts[split])):
            writer.add_item(index, record)
        writer.done()
        writer.merge(1)
    summary = {"source": "emoji-chat", "version": demo.version, "seed": demo.seed,
               "splits": {split: {"conversations": counts[split]} for split in SPLITS}}  # fmt: skip
    (out / "prep_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def chat_demo(name: str) -> tuple[str, DemoChat]:
    """``(short name, recipe)`` of ``"demo:<name>"`` or ``"<name>"``; :class:`ConfigError` when unknown."""
    short = name[len(DEMO_PREFIX) :] if name.startswith(DEMO_PREFIX) else name
    if short not in DEMO_CHATS:
        raise ConfigError(f"Unknown chat demo {name!r}; available: {', '.join(DEMO_PREFIX + n for n in DEMO_CHATS)}")
    return short, DEMO_CHATS[short]


def ensure_demo_chat(name: str) -> Path:
    """The folder of a chat demo (``train/``, ``val/``, ``prep_summary.json``), built on first use."""
    short, demo = chat_demo(name)
    return build_once(cache_root() / "demo" / f"{short}-{demo.version}", lambda scratch: write_chat_demo(demo, scratch))
