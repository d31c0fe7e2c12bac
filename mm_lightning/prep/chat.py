"""Turn conversations (JSONL in the common ``messages`` format) into litdata shards for supervised fine-tuning.

The output folder holds what :class:`~mm_lightning.data.chat.ChatDataModule` streams::

    OUT/train/, OUT/val/    litdata chunks of records {"messages": JSON (mm_lightning.chat.messages_to_json),
                            "images": packed image bytes (media.interleave.pack_blobs), "source": "file:line"}
    OUT/tokenizer.json      only when one is given (``--tokenizer``): the tokenizer of the model to fine-tune
    OUT/prep_summary.json   conversations and skipped records per split

One JSON object a line, in any of these forms (they mix freely)::

    {"messages": [{"role": "user", "content": "What colour is the background?"},
                  {"role": "assistant", "content": "blue"}]}
    {"messages": [{"role": "user", "content": [{"type": "image", "image": "scenes/1.png"},
                                               {"type": "text", "text": "How many emoji are there?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "two"}]}]}
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://..."}},
                                               {"type": "text", "text": "..."}]}, ...]}
    {"messages": [{"role": "user", "content": "<image>Is there a bee?"}, ...], "images": ["scenes/2.png"]}
    {"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}], "image": "a.jpg"}

Roles are ``system``, ``user`` and ``assistant`` (``human``, ``gpt`` and ``model`` as ShareGPT and Gemini write
them). An image is a path (relative to the JSONL file's folder), a ``file://``, ``http(s)://`` or base64 ``data:`` URL.
With a top-level ``images`` (or ``image``) list, each ``<image>`` in a text and each ``{"type": "image"}`` part
without a source takes the next listed image; when the messages place none of them, they all go before the first user
turn's text (LLaVA's convention); placing some but not all is a bad record. Without such a list ``<image>`` is plain
text.

Images keep their encoding unless their longer side exceeds ``max_side`` or their format is not JPEG, PNG or WebP
(then resized and re-encoded, as in :mod:`mm_lightning.prep.image_text`). Tokenizing happens at load time, so the
chat template (:mod:`mm_lightning.chat`) can change without preparing again. Bad records (malformed JSON, not a
conversation, an unknown role, no assistant turn, an empty answer, an image outside a user turn, images and
``<image>`` placeholders that disagree, a missing or undecodable image) are reported with file and line, counted and
skipped, with a summary at the end (``--strict``: the first one stops the run); splits, the output checks and the
decoding pool are :mod:`mm_lightning.prep.media`'s.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.chat import Message, messages_to_json
from mm_lightning.errors import MMLightningError
from mm_lightning.media.interleave import pack_blobs
from mm_lightning.prep.image_readers import STORED_FORMATS, caption_file_rows, inspect_image
from mm_lightning.prep.image_text import resize_to_max_side
from mm_lightning.prep.media import (
    PREPARED_NAMES,
    Failure,
    MediaItem,
    MediaKind,
    PrepRun,
    existing_outputs,
    prepare_media_shards,
)
from mm_lightning.prep.text import output_folder
from mm_lightning.prep.text_readers import SourceFile, discover_files

SKIP_REASONS = {
    "malformed_json": "malformed JSON",
    "malformed": "not a conversation",
    "unknown_role": "unknown role",
    "no_assistant_turn": "no assistant turn",
    "empty_answer": "empty assistant answer",
    "misplaced_image": "image outside a user turn",
    "image_count": "images and <image> placeholders disagree",
    "missing_image": "image file missing",
    "bad_image": "unreadable or undecodable image",
    "unreadable_file": "file unreadable",
}
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "model": "assistant"}  # fmt: skip
PLACEHOLDER = "<image>"
URL_TIMEOUT_S = 30.0


class ChatPrepError(MMLightningError):
    """Conversations that cannot be prepared (none usable, or a bad record under ``strict``)."""


class BadConversation(Exception):
    """Why a record is skipped: a key of :data:`SKIP_REASONS` and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class ImageRef(NamedTuple):
    """An image in a parsed turn: where to read it from (a path or URL as written)."""

    ref: str


def find_chat_sources(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The ``.jsonl`` files of ``inputs`` (files, or folders searched recursively)."""
    return discover_files(inputs, lambda p: "jsonl" if p.suffix.lower() == ".jsonl" else None, ChatPrepError,
                          "No conversation .jsonl files")  # fmt: skip


# --- parsing one record -------------------------------------------------------------------------------------------


class _ImagePool:
    """The top-level ``images`` of a record, handed out in order to placeholders and source-less image parts."""

    def __init__(self, record: dict):
        listed = record.get("images", record.get("image"))
        listed = [listed] if isinstance(listed, str) else listed if listed is not None else []
        if not isinstance(listed, list) or not all(isinstance(ref, str) for ref in listed):
            raise BadConversation("malformed", "images must be a path or URL, or a list of them")
        self.listed, self.used = listed, 0

    def take(self) -> ImageRef:
        if self.used == len(self.listed):
            raise BadConversation("image_count", f"more image places than the {len(self.listed)} listed images")
        self.used += 1
        return ImageRef(self.listed[self.used - 1])

    def split_text(self, text: str) -> list[str | ImageRef]:
        """``text`` with each ``<image>`` replaced by the next image (plain text when nothing is listed)."""
        if not self.listed:
            return [text] if text else []
        pieces = text.split(PLACEHOLDER)
        parts: list[str | ImageRef] = [pieces[0]]
        for piece in pieces[1:]:
            parts += [self.take(), piece]
        return [part for part in parts if part != ""]


def _image_source(part: dict) -> str | None:
    found = next((part[key] for key in ("image", "image_url", "url", "path") if part.get(key) is not None), None)
    found = found.get("url") if isinstance(found, dict) else found
    if found is not None and not isinstance(found, str):
        raise BadConversation("malformed", f"image source {found!r} is not a path or URL")
    return found


def _parse_part(part: object, pool: _ImagePool) -> list[str | ImageRef]:
    if isinstance(part, str):
        return pool.split_text(part)
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return pool.split_text(part["text"])
    if kind in ("image", "image_url"):
        source = _image_source(part)
        return [ImageRef(source) if source is not None else pool.take()]
    raise BadConversation("malformed", f"content part {json.dumps(part)[:60]}")


def _parse_turn(turn: object, pool: _ImagePool) -> tuple[str, list[str | ImageRef]]:
    if not isinstance(turn, dict):
        raise BadConversation("malformed", "a message is not a JSON object")
    role = turn.get("role", turn.get("from"))
    if role not in ROLE_NAMES:
        raise BadConversation("unknown_role", repr(role))
    content = turn.get("content", turn.get("value"))
    if isinstance(content, str):
        return ROLE_NAMES[role], pool.split_text(content)
    if not isinstance(content, list):
        raise BadConversation("malformed", f"{role} content is neither text nor a list of parts")
    return ROLE_NAMES[role], [piece for part in content for piece in _parse_part(part, pool)]


def _place_unplaced(turns: list[tuple[str, list]], pool: _ImagePool) -> None:
    """All listed images before the first user turn's text when no message placed any; else all must be placed."""
    if pool.used == 0 and pool.listed:
        first_user = next((parts for role, parts in turns if role == "user"), None)
        if first_user is None:
            raise BadConversation("misplaced_image", "images listed but no user turn")
        first_user[:0] = [ImageRef(ref) for ref in pool.listed]
    elif pool.used != len(pool.listed):
        raise BadConversation("image_count", f"{pool.used} of the {len(pool.listed)} listed images placed")


def _numbered(turns: list[tuple[str, list]]) -> tuple[list[Message], list[str]]:
    """Messages with images numbered in reading order, and the image sources in that order."""
    refs: list[str] = []
    messages = []
    for role, parts in turns:
        if role != "user" and any(isinstance(part, ImageRef) for part in parts):
            raise BadConversation("misplaced_image", f"an image in a {role} turn")
        content = []
        for part in parts:
            if isinstance(part, ImageRef):
                refs.append(part.ref)
                part = len(refs) - 1
            content.append(part)
        messages.append(Message(role, tuple(content)))
    return messages, refs


def parse_conversation(record: object) -> tuple[list[Message], list[str]]:
    """The messages of one JSONL record (images numbered in reading order) and its image sources, in that order.

    Raises:
        BadConversation: why the record is skipped (its ``reason`` is a key of :data:`SKIP_REASONS`).
    """
    if not isinstance(record, dict):
        raise BadConversation("malformed", "not a JSON object")
    raw_turns = record.get("messages", record.get("conversations"))
    if not isinstance(raw_turns, list) or not raw_turns:
        raise BadConversation("malformed", "no messages (or conversations) list")
    pool = _ImagePool(record)
    turns = [_parse_turn(turn, pool) for turn in raw_turns]
    _place_unplaced(turns, pool)
    messages, refs = _numbered(turns)
    answers = [turn for turn in messages if turn.role == "assistant"]
    if not answers:
        raise BadConversation("no_assistant_turn")
    if any(not turn.text.strip() for turn in answers):
        raise BadConversation("empty_answer")
    return messages, refs


# --- items and loading --------------------------------------------------------------------------------------------


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "data:"))


def _resolve(ref: str, folder: Path) -> str:
    """A URL as written; a path (or ``file://``) made absolute against the JSONL file's folder."""
    if _is_url(ref):
        return ref
    path = Path(ref.removeprefix("file://")).expanduser()
    return str(path if path.is_absolute() else folder / path)


def iter_conversations(source: SourceFile, options: dict) -> Iterator[MediaItem]:
    """Every line of a JSONL file as an item: the conversation and its images to load, or why it is skipped."""
    for number, row in caption_file_rows(source.path):
        if row is None:
            yield MediaItem(number, f"{number}", None, "malformed_json")
            continue
        try:
            messages, refs = parse_conversation(row)
        except BadConversation as bad:
            yield MediaItem(number, f"{number}", None, bad.reason, bad.detail)
            continue
        images = [_resolve(ref, source.path.parent) for ref in refs]
        missing = next((path for path in images if not _is_url(path) and not Path(path).is_file()), None)
        if missing is not None:
            yield MediaItem(number, f"{number}", None, "missing_image", missing)
            continue
        stored = json.dumps(messages_to_json(messages))
        yield MediaItem(number, f"{number}", (stored, images, f"{source.key}:{number}", options["max_side"]), None)


def read_image_bytes(ref: str) -> bytes:
    """The bytes of an image path, ``http(s)://`` URL or base64 ``data:`` URL.

    Raises:
        OSError, ValueError: the image cannot be read.
    """
    if ref.startswith("data:"):
        header, _, data = ref.partition(",")
        return base64.b64decode(data, validate=True) if header.endswith(";base64") else unquote_to_bytes(data)
    if ref.startswith(("http://", "https://")):
        with urllib.request.urlopen(ref, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return response.read()
    return Path(ref).read_bytes()


def load_conversation(payload: tuple[str, list[str], str, int]) -> dict | Failure:
    """Read and check one conversation's images into a shard record (a pool task)."""
    messages, images, where, max_side = payload
    blobs = []
    for ref in images:
        shown = ref if len(ref) < 80 else ref[:77] + "..."
        try:
            data = read_image_bytes(ref)
        except (OSError, ValueError) as err:
            return Failure("bad_image", f"{shown}: {type(err).__name__}: {err}")
        info = inspect_image(data)
        if info.reason is not None:
            return Failure("bad_image", shown)
        if info.format not in STORED_FORMATS or max(info.size) > max_side:
            data = resize_to_max_side(data, max_side)
        blobs.append(data)
    return {"messages": messages, "images": pack_blobs(blobs), "source": where}


CHAT_KIND = MediaKind(
    noun="conversation", plural="conversations", skip_reasons=SKIP_REASONS, error=ChatPrepError,
    find_sources=find_chat_sources, iter_items=iter_conversations, load=load_conversation,
)  # fmt: skip


def prepare_chat_shards(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    max_side: int = 512,
    tokenizer: str | Path | None = None,
    run: PrepRun = PrepRun(),
) -> dict:
    """Write conversations into ``output_dir/{train/,val/,prep_summary.json}`` (and ``tokenizer.json``).

    Args:
        inputs: ``.jsonl`` files or folders of them (image paths relative to each file).
        output_dir: a local folder; it must not hold prepared data already unless ``run.overwrite``.
        max_side: images whose longer side exceeds this are scaled down to it (aspect ratio kept).
        tokenizer: a ``tokenizer.json`` (the model's) copied to the output for the datamodule.
        run: split share, strictness, loading processes, overwrite, progress and where bad records are reported.

    Returns:
        The summary also written to ``prep_summary.json``.

    Raises:
        ChatPrepError: nothing usable, a bad record under ``run.strict``, or an occupied or remote output.
    """
    out = output_folder(output_dir, ChatPrepError)
    if max_side < 1:
        raise ChatPrepError(f"max_side must be at least 1, got {max_side}")
    tok = tokenizer_lib.load_tokenizer(tokenizer) if tokenizer is not None else None
    existing_outputs(CHAT_KIND, out, run.overwrite, ("tokenizer.json", *PREPARED_NAMES))
    options = {"max_side": max_side, "tokenizer": str(tokenizer) if tokenizer is not None else None}
    summary = prepare_media_shards(CHAT_KIND, inputs, out, options, run)
    (out / "tokenizer.json").unlink(missing_ok=True)  # an earlier preparation's (replaced under overwrite)
    if tok is not None:
        tok.save(str(out / "tokenizer.json"))
    return summary
