"""The chat template (mm_lightning/chat.py): the exact rendering, targets on the answers and their end of turn only,
image spans, prompts that are exactly the training prefix, the stored form and exact match."""

from __future__ import annotations

import pytest

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.chat import (
    END_OF_TURN_ID,
    Message,
    answer_text,
    assistant_turns,
    encode_conversation,
    is_exact_match,
    message,
    messages_from_json,
    messages_to_json,
    prompt_ids,
    render,
)
from mm_lightning.tokenizer import EOD_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID

EXAMPLE = [
    message("system", "Answer in a few words."),
    message("user", 0, "What colour is the background?"),
    message("assistant", "blue"),
    message("user", "How many emoji are there?"),
    message("assistant", "two"),
]
CONVERSATIONS = [
    EXAMPLE,
    [message("user", "  Describe ", 0, " then ", 1, 2, "  "), message("assistant", "  a bee, twice.\n")],
    [message("user", "Hello"), message("assistant", "Hi there!"), message("user", 0), message("assistant", "a cat")],
    [message("assistant", "I start."), message("user", "Why?"), message("assistant", "Because.")],
]


@pytest.fixture(scope="module")
def tok():
    texts = [render(c) for c in CONVERSATIONS] * 4 + ["User: Assistant: System: colour background emoji"] * 4
    return tokenizer_lib.train_bpe_tokenizer(texts, vocab_size=320)


def test_the_rendering_of_an_example_is_exact():
    assert render(EXAMPLE) == (
        "System: Answer in a few words.\n"
        "User: <|image_start|><|image|><|image_end|>What colour is the background?\n"
        "Assistant: blue<|endoftext|>"
        "User: How many emoji are there?\n"
        "Assistant: two<|endoftext|>"
    )


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_decoding_the_ids_gives_the_rendering(tok, conversation: list[Message]):
    ids, targets = encode_conversation(tok, conversation)
    assert tokenizer_lib.decode(tok, ids) == render(conversation) and len(targets) == len(ids)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_targets_are_exactly_each_answer_and_its_end_of_turn(tok, conversation: list[Message]):
    ids, targets = encode_conversation(tok, conversation)
    expected = []
    for turn in conversation:
        if turn.role == "assistant":
            expected += [*tokenizer_lib.encode(tok, " " + turn.text.strip()), END_OF_TURN_ID]
    assert [i for i, t in zip(ids, targets) if t] == expected
    assert all(t for i, t in zip(ids, targets) if i == EOD_ID)  # every EOD ends an answer
    # the answers are contiguous runs: each ends at its EOD, and what follows (a marker) is no target
    runs = "".join("1" if t else "0" for t in targets).split("0")
    assert [len(r) for r in runs if r] == [len(tokenizer_lib.encode(tok, " " + t.text.strip())) + 1
                                           for t in conversation if t.role == "assistant"]  # fmt: skip


def test_each_image_is_one_span_that_is_never_a_target(tok):
    conversation = CONVERSATIONS[1]
    ids, targets = encode_conversation(tok, conversation)
    assert ids.count(IMAGE_ID) == 3 and ids.count(IMAGE_START_ID) == 3 and ids.count(IMAGE_END_ID) == 3
    for position, token in enumerate(ids):
        if token == IMAGE_ID:
            assert ids[position - 1] == IMAGE_START_ID and ids[position + 1] == IMAGE_END_ID
    assert not any(t for i, t in zip(ids, targets) if i in (IMAGE_ID, IMAGE_START_ID, IMAGE_END_ID))
    assert render(conversation).startswith("User: Describe <|image_start|>")  # the turn is stripped at its ends


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_prompt_ids_are_the_training_prefix_of_each_answer(tok, conversation: list[Message]):
    ids, targets = encode_conversation(tok, conversation)
    for history, answer in assistant_turns(conversation):
        prompt = prompt_ids(tok, history)
        assert ids[: len(prompt)] == prompt  # what the model saw before the answer in training
        answer_ids = [*tokenizer_lib.encode(tok, " " + answer.text.strip()), END_OF_TURN_ID]
        assert ids[len(prompt) : len(prompt) + len(answer_ids)] == answer_ids
        assert all(targets[len(prompt) : len(prompt) + len(answer_ids)]) and not any(targets[: len(prompt)][-3:])
        assert answer_text(tok, [*answer_ids, 77, 78]) == answer.text.strip()


def test_bad_conversations_are_refused(tok):
    with pytest.raises(ValueError, match="ends with an assistant turn"):
        prompt_ids(tok, EXAMPLE)
    with pytest.raises(ValueError, match="numbered 0, 1"):
        encode_conversation(tok, [message("user", 1, "?"), message("assistant", "x")])
    with pytest.raises(ValueError, match="text only"):
        message("assistant", 0, "an image")
    with pytest.raises(ValueError, match="role"):
        message("tool", "x")


def test_the_stored_form_round_trips():
    for conversation in CONVERSATIONS:
        assert messages_from_json(messages_to_json(conversation)) == conversation
    tagged = [message("user", 0, "?"), message("assistant", "blue", tag="background")]
    assert messages_to_json(tagged)[1] == {"role": "assistant", "content": [{"type": "text", "text": "blue"}],
                                           "tag": "background"}  # fmt: skip
    assert messages_from_json(messages_to_json(tagged)) == tagged


def test_exact_match_ignores_case_spacing_and_final_punctuation():
    assert is_exact_match(" Blue. ", "blue") and is_exact_match("a  red\napple!", "A red apple")
    assert not is_exact_match("blue green", "blue") and not is_exact_match("", "blue")
