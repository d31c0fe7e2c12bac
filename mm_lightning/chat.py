"""The chat template of supervised fine-tuning: conversations as token ids with a mask of the assistant's targets.

Roles are plain-text markers, not special tokens: every project tokenizer encodes them, the five special tokens keep
ids 0..4, and the demo tokenizer and checkpoints trained before fine-tuning need no new embedding rows. The end of an
assistant turn is ``<|endoftext|>`` (EOD), the token every earlier stage already ends a document with and
generation already stops at (:data:`END_OF_TURN_ID`). A conversation with an image, two questions and a system line
renders as::

    System: Answer in a few words.
    User: <|image_start|><|image|><|image_end|>What colour is the background?
    Assistant: blue<|endoftext|>User: How many emoji are there?
    Assistant: two<|endoftext|>

- a system turn is ``"System: " + text + "\\n"``; a user turn ``"User: " + content + "\\n"``, where the content is
  its text pieces as written (stripped at the ends of the turn) with each image as the span ``<|image_start|>
  <|image|> <|image_end|>`` (one ``<|image|>``, expanded to the projector's token count by the packing, as in the
  joint stages);
- an assistant turn is the marker ``"Assistant:"``, then ``" " + answer`` (the answer stripped) and EOD.
  The answer's tokens and that EOD are the targets; markers, system and user text and images are not.

Each piece (a turn's text around its images, the marker, the answer) is tokenized on its own, so the ids before an
answer are the same in training and in :func:`prompt_ids` (no BPE merge across a boundary), and decoding the ids
gives back :func:`render` exactly. In a multi-turn conversation EOD sits inside the sample; the packing keeps the
conversation one attention sequence (:attr:`~mm_lightning.media.interleave.MixSample.eod_ends_document`), and a prompt
fed to the model as one sequence matches it.

A :class:`Message` holds text pieces and images by number (``0, 1, ...`` in the order they appear in the
conversation); the pixels travel beside it. :func:`messages_to_json` / :func:`messages_from_json` are the form
stored in prepared shards. Nothing here imports Lightning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.media.interleave import interleave
from mm_lightning.tokenizer import EOD_ID, EOD_TOKEN, IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

ROLES = ("system", "user", "assistant")
MARKERS = {"system": "System: ", "user": "User: "}
"""What opens a system or user turn (its text follows on the same line; a newline closes it)."""
ASSISTANT_MARKER = "Assistant:"
"""What opens an assistant turn; the answer follows after a space."""
END_OF_TURN_ID = EOD_ID
"""The token that ends every assistant turn (a target): stop generating at it."""
IMAGE_TEXT = IMAGE_START_TOKEN + IMAGE_TOKEN + IMAGE_END_TOKEN
"""How :func:`render` shows an image (the ids' decoded text)."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """``"system"``, ``"user"`` or ``"assistant"``."""
    content: tuple[str | int, ...]
    """Text pieces and images, in reading order; an image is its number in the conversation (0, 1, ... in order)."""
    tag: str = ""
    """What an assistant answer tests (the demo's question kinds, for scores per kind); empty when unknown."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.role == "assistant" and self.images:
            raise ValueError("an assistant turn holds text only")

    @property
    def text(self) -> str:
        """The text pieces joined (images left out)."""
        return "".join(part for part in self.content if isinstance(part, str))

    @property
    def images(self) -> list[int]:
        """The numbers of the turn's images, in order."""
        return [part for part in self.content if isinstance(part, int)]


def message(role: str, *content: str | int, tag: str = "") -> Message:
    """A :class:`Message` from its parts: ``message("user", 0, "What colour is the background?")``."""
    return Message(role, tuple(content), tag)


def _segments(turn: Message) -> list[str]:
    """A system or user turn's text around its images, marker and newline included (``images + 1`` pieces)."""
    segments = [""]
    for part in turn.content:
        if isinstance(part, str):
            segments[-1] += part
        else:
            segments.append("")
    segments[0] = MARKERS[turn.role] + segments[0].lstrip()
    segments[-1] = segments[-1].rstrip() + "\n"
    return segments


def encode_turn(tokenizer, turn: Message) -> tuple[list[int], list[bool]]:
    """Token ids of one turn and, per id, whether it is a target (the answer and EOD of an assistant turn)."""
    if turn.role == "assistant":
        marker = tokenizer_lib.encode(tokenizer, ASSISTANT_MARKER)
        answer = [*tokenizer_lib.encode(tokenizer, " " + turn.text.strip()), END_OF_TURN_ID]
        return marker + answer, [False] * len(marker) + [True] * len(answer)
    ids = interleave(tokenizer, _segments(turn), len(turn.images), eod=False)
    return ids, [False] * len(ids)


def encode_conversation(tokenizer, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation (one ``<|image|>`` per image) and the per-id target mask.

    Returns:
        ``(ids, targets)``: ``targets[i]`` is True where ``ids[i]`` is an assistant answer token or the EOD ending
        an assistant turn; it is the ``loss_mask`` of a :class:`~mm_lightning.media.interleave.MixSample`.
    """
    check_images(messages)
    ids: list[int] = []
    targets: list[bool] = []
    for turn in messages:
        turn_ids, turn_targets = encode_turn(tokenizer, turn)
        ids += turn_ids
        targets += turn_targets
    return ids, targets


def prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """The ids to generate the next answer from: the conversation so far, then the assistant marker.

    The model's continuation is ``" " + answer`` and EOD (:data:`END_OF_TURN_ID`); :func:`answer_text` reads it.

    Raises:
        ValueError: the conversation already ends with an assistant turn.
    """
    if messages and messages[-1].role == "assistant":
        raise ValueError("the conversation ends with an assistant turn: nothing to answer")
    ids, _ = encode_conversation(tokenizer, messages)
    return ids + tokenizer_lib.encode(tokenizer, ASSISTANT_MARKER)


def assistant_turns(messages: Sequence[Message]) -> Iterator[tuple[list[Message], Message]]:
    """Each assistant turn with the conversation before it (the prompt of that answer), in order."""
    for position, turn in enumerate(messages):
        if turn.role == "assistant":
            yield list(messages[:position]), turn


def render(messages: Sequence[Message]) -> str:
    """The text of :func:`encode_conversation`'s ids, special tokens written out (decoding the ids gives it)."""
    pieces = []
    for turn in messages:
        if turn.role == "assistant":
            pieces.append(f"{ASSISTANT_MARKER} {turn.text.strip()}{EOD_TOKEN}")
        else:
            pieces.append(IMAGE_TEXT.join(_segments(turn)))
    return "".join(pieces)


def answer_text(tokenizer, generated: Sequence[int]) -> str:
    """The answer in generated ids: up to the first end of turn, special tokens dropped, stripped."""
    ids = list(generated)
    ids = ids[: ids.index(END_OF_TURN_ID)] if END_OF_TURN_ID in ids else ids
    return tokenizer_lib.decode_generated(tokenizer, ids).strip()


def normalize_answer(text: str) -> str:
    """An answer as exact match compares it: lower case, single spaces, no surrounding space or final ``.!?``."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip().lower()


def is_exact_match(answer: str, reference: str) -> bool:
    """Whether ``answer`` equals ``reference`` once both are normalised (:func:`normalize_answer`)."""
    return normalize_answer(answer) == normalize_answer(reference)


def check_images(messages: Sequence[Message], count: int | None = None) -> None:
    """Refuse images numbered out of order (they must be 0, 1, ... as they appear), or not ``count`` of them."""
    numbers = [number for turn in messages for number in turn.images]
    if numbers != list(range(len(numbers))) or count is not None and count != len(numbers):
        expected = f"{count} images" if count is not None else "images"
        raise ValueError(f"a conversation's images must be numbered 0, 1, ... in order ({expected}), got {numbers}")


def messages_to_json(messages: Sequence[Message]) -> list[dict]:
    """The stored form: ``[{"role", "content": [{"type": "text", "text"} | {"type": "image", "index"}], "tag"?}]``."""
    stored = []
    for turn in messages:
        parts = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "index": p}
                 for p in turn.content]  # fmt: skip
        stored.append({"role": turn.role, "content": parts, **({"tag": turn.tag} if turn.tag else {})})
    return stored


def messages_from_json(stored: list[dict]) -> list[Message]:
    """The messages of :func:`messages_to_json`'s form."""
    messages = []
    for turn in stored:
        parts = tuple(p["text"] if p["type"] == "text" else int(p["index"]) for p in turn["content"])
        messages.append(Message(turn["role"], parts, turn.get("tag", "")))
    return messages
