"""The demo instruction data (demo:emoji-chat): deterministic, answers true to the scene, every question kind in
several phrasings, a val split of compositions never seen in training, registered as a demo name."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from mm_lightning.demo import demo_family, demo_names
from mm_lightning.demo.emoji_scenes import PLACES, SceneConfig, article, emoji_name, is_held_out
from mm_lightning.demo.instructions import DEMO_CHATS, NUMBERS, chat_record, generate_conversation
from mm_lightning.media.interleave import unpack_blobs

KINDS = {"background", "count", "presence", "place", "relation", "order"}


def conversations(split: str, count: int):
    return [generate_conversation(split, index) for index in range(count)]


def test_conversations_are_a_function_of_seed_split_and_index():
    for split in ("train", "val"):
        for index in (0, 7, 123):
            first, second = generate_conversation(split, index), generate_conversation(split, index)
            assert first == second
            assert chat_record(first, "x") == chat_record(second, "x")
    assert generate_conversation("train", 3) != generate_conversation("val", 3)
    other_seed = DEMO_CHATS["emoji-chat"].__class__(version="v1", seed=1)
    assert any(generate_conversation("train", i, other_seed).messages != generate_conversation("train", i).messages
               for i in range(8))  # fmt: skip


def test_the_val_split_holds_compositions_never_seen_in_training():
    config = SceneConfig()
    train = {c.scene.composition for c in conversations("train", 3000)}
    val = {c.scene.composition for c in conversations("val", 256)}
    assert not train & val
    assert all(is_held_out(composition, config) for composition in val)
    assert not any(is_held_out(composition, config) for composition in train)


def _check_answer(conversation, kind: str, question: str, answer: str) -> None:
    """The answer as the scene's geometry says it (boxes, layout), not as the generator computed it."""
    scene = conversation.scene
    names = [emoji_name(s) for s in scene.sprites]
    layout = scene.composition.split(":")[0]
    if kind == "background":
        assert answer == scene.background
    elif kind == "count":
        assert answer == NUMBERS[len(names)]
    elif kind == "presence":
        assert answer == ("yes" if any(f" {article(n)}?" in question or f" {article(n)} in" in question
                                       for n in names) else "no"), question  # fmt: skip
    elif kind == "place" and question.startswith("Where"):
        assert answer == PLACES[int(layout[-2]), int(layout[-1])]
    elif kind == "place":
        asked = next(place for place in PLACES.values() if question.rstrip("?").endswith(place))
        assert answer == (article(names[0]) if asked == PLACES[int(layout[-2]), int(layout[-1])] else "nothing")
    elif kind == "relation":
        (x0, y0, s0), (x1, y1, s1) = scene.boxes
        anchor = next(i for i, n in enumerate(names) if question.rstrip("?").endswith(f"the {n}"))
        other = 1 - anchor
        centre = [(x0 + s0 / 2, y0 + s0 / 2), (x1 + s1 / 2, y1 + s1 / 2)]
        axis, sign = {"above": (1, -1), "below": (1, 1), "to the left of": (0, -1), "to the right of": (0, 1)}[
            next(r for r in ("above", "below", "to the left of", "to the right of") if f" {r} " in question)
        ]
        assert answer == article(names[other]) and sign * (centre[other][axis] - centre[anchor][axis]) > 0
    elif kind == "order":
        axis = 0 if layout == "row" else 1
        ordered = [names[i] for i in sorted(range(3), key=lambda i: scene.boxes[i][axis])]
        position = 1 if "middle" in question else 0 if ("left" in question or "top" in question) else 2
        assert answer == article(ordered[position])


def test_answers_are_true_to_the_scene_and_every_kind_has_several_phrasings():
    phrasings, answers, text_only = defaultdict(set), defaultdict(Counter), 0
    for conversation in conversations("train", 1500) + conversations("val", 200):
        messages = conversation.messages
        first = messages[0]
        assert first.images == ([0] if conversation.with_image else [])
        assert not conversation.with_image == first.text.startswith(f"A picture shows {conversation.scene.caption}.")
        text_only += not conversation.with_image
        kinds = []
        for user, assistant in zip(messages[::2], messages[1::2]):
            assert user.role == "user" and assistant.role == "assistant"
            kind = assistant.tag.removeprefix("text-")
            question = user.text.split(". ")[-1] if user is first and not conversation.with_image else user.text
            _check_answer(conversation, kind, question, assistant.text)
            phrasings[kind].add(question.split(" the ")[0].split(" a ")[0].split(" an ")[0])
            answers[kind][assistant.text] += 1
            kinds.append(kind)
        assert 1 <= len(kinds) <= 3 and len(set(kinds)) == len(kinds)
    assert set(phrasings) == KINDS and all(len(p) >= 2 for p in phrasings.values()), phrasings
    assert answers["presence"]["yes"] > 0.35 * sum(answers["presence"].values()) and answers["place"]["nothing"] > 0
    assert 0.08 < text_only / 1700 < 0.18


def test_records_hold_the_image_and_the_tagged_messages():
    conversation = next(c for c in conversations("train", 20) if c.with_image)
    record = chat_record(conversation, "emoji-chat/train/0")
    assert len(unpack_blobs(record["images"])) == 1 and unpack_blobs(record["images"])[0][:4] == b"\x89PNG"
    stored = json.loads(record["messages"])
    assert stored[0]["content"][0] == {"type": "image", "index": 0} and stored[1]["tag"] in KINDS
    text_only = next(c for c in conversations("train", 60) if not c.with_image)
    assert unpack_blobs(chat_record(text_only, "s")["images"]) == []


def test_emoji_chat_is_a_registered_demo():
    assert "demo:emoji-chat" in demo_names("chat") and demo_family("demo:emoji-chat") == "chat"
    assert DEMO_CHATS["emoji-chat"].train == 4096 and DEMO_CHATS["emoji-chat"].val == 256


@pytest.mark.parametrize("name", ["demo:emoji-scenes", "demo:sotu"])
def test_other_families_stay_apart(name: str):
    assert demo_family(name) != "chat"
