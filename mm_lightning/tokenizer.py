"""Byte-level BPE tokenizer shared by every stage (GPT-2 style byte-level BPE, trained with HF ``tokenizers``).

The vocabulary starts with five special tokens, always at ids 0..4, so that the text stages and the later
multimodal stages agree on them: ``<|endoftext|>`` (end of document, EOD), ``<|pad|>``, ``<|image|>``,
``<|image_start|>`` and ``<|image_end|>``.

Encoding is lossless: a byte-level pre-tokenizer (no prefix space), no normalizer and a byte-level decoder,
so ``decode(encode(text)) == text`` for any UTF-8 text. Special-token strings that occur *inside* a text are
encoded as ordinary bytes (``encode_special_tokens``), so a document that quotes ``<|endoftext|>`` can never
fake a document boundary; special tokens enter a sequence only by id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mm_lightning.errors import MMLightningError

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IMAGE_TOKEN = "<|image|>"
IMAGE_START_TOKEN = "<|image_start|>"
IMAGE_END_TOKEN = "<|image_end|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN, IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN)
# their ids, fixed by the order above (every tokenizer is checked to agree on load); defined here only
EOD_ID, PAD_ID, IMAGE_ID, IMAGE_START_ID, IMAGE_END_ID = range(len(SPECIAL_TOKENS))
IMAGE_SPAN = (IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID)
"""How an image sits in a token sequence; the one ``<|image|>`` expands to its merged tokens when packed."""

_NUM_BYTES = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + _NUM_BYTES
_WHAT_TO_PASS = "pass the tokenizer.json that `mm-lightning prepare text` wrote"


class TokenizerError(MMLightningError, ValueError):
    """A tokenizer file that is not a ``tokenizers`` JSON, or whose special tokens are not at ids 0..4."""


def build_empty_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with the lossless pre-tokenizer/decoder pair."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    out_path: str | Path | None = None,
    length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose ids 0..4 are the special tokens.

    Args:
        texts: the training documents (any iterable; consumed once).
        vocab_size: the target vocabulary size, specials and the 256 byte tokens included.
        out_path: where to save ``tokenizer.json``; not saved when ``None``.
        length: the number of texts, if known (only for the progress bar).

    Returns:
        The trained tokenizer, ready to encode (see :func:`load_tokenizer`).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (5 special tokens + 256 bytes), got {vocab_size}"
        )
    tok = build_empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    _check_special_ids(tok, source="the trained tokenizer")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(out_path))
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` and check that its special tokens sit at ids 0..4.

    Args:
        path: a local ``tokenizer.json`` file.

    Returns:
        The tokenizer, set to encode special-token strings inside texts as plain text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer file at {path}")
    try:
        json_text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path} is not a tokenizer.json (not UTF-8 text); {_WHAT_TO_PASS}") from None
    return tokenizer_from_str(json_text, source=str(path))


def tokenizer_from_str(json_text: str, source: str = "<string>") -> Tokenizer:
    """Like :func:`load_tokenizer`, from the JSON text of a ``tokenizer.json`` (e.g. read from a bucket).

    Raises:
        TokenizerError: the text is not JSON, not a ``tokenizers`` file, or its special tokens are elsewhere.
    """
    try:
        tok = Tokenizer.from_str(json_text)
    except Exception as error:  # tokenizers raises a bare Exception for any text it cannot read
        raise TokenizerError(f"{source} is not a tokenizer.json ({_why_unreadable(json_text, error)}); {_WHAT_TO_PASS}")
    _check_special_ids(tok, source=source)
    tok.encode_special_tokens = True
    return tok


def _why_unreadable(json_text: str, error: Exception) -> str:
    try:
        json.loads(json_text)
    except json.JSONDecodeError as not_json:
        return f"not JSON: {not_json}"
    return f"JSON, but not a Hugging Face tokenizers file: {' '.join(str(error).split())}"


def _check_special_ids(tok: Tokenizer, source: str) -> None:
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        found = tok.token_to_id(token)
        if found != expected_id:
            raise TokenizerError(
                f"{source}: special token {token!r} must have id {expected_id}, found {found}. "
                f"mm_lightning needs the special tokens {list(SPECIAL_TOKENS)} at ids 0..4."
            )


def eod_id(tok: Tokenizer) -> int:
    """The id of the end-of-document token ``<|endoftext|>``."""
    return tok.token_to_id(EOD_TOKEN)


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, without any special token added."""
    return tok.encode(text, add_special_tokens=False).ids


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of several texts at once (parallel in the Rust backend)."""
    return [enc.ids for enc in tok.encode_batch(texts, add_special_tokens=False)]


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """The text of ``ids``; special tokens are kept as their strings, so no token is lost."""
    return tok.decode(list(ids), skip_special_tokens=False)


def decode_generated(tok: Tokenizer, ids: Iterable[int]) -> str:
    """The text of generated ``ids`` as people read it: no special token shows, neither by id (ids 0..4 and any
    other token the tokenizer marks special) nor as text (a special token's string spelt with ordinary tokens).

    Every decode of generated text (captions, chat answers, ``generate``) goes through here.
    """
    text = tok.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=True)
    for token in special_token_strings(tok):
        text = text.replace(token, "")
    return text


def special_token_strings(tok: Tokenizer) -> list[str]:
    """The strings of the tokenizer's special tokens: the five at ids 0..4 and any other it marks special."""
    extra = [added.content for added in tok.get_added_tokens_decoder().values() if added.special]
    return list(dict.fromkeys([*SPECIAL_TOKENS, *extra]))
