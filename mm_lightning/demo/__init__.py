"""The embedded demo data: corpora named ``demo:<name>``, built on first use from the packaged ``assets/``.

Four families, each built the way its ``data_prep`` script would write real data, so the same readers serve both:

- text (:mod:`~mm_lightning.demo.corpora`): ``demo:sotu``, ``demo:sotu-captions``;
- image-text (:mod:`~mm_lightning.demo.emoji_scenes`): ``demo:emoji-scenes``;
- long inputs (:mod:`~mm_lightning.demo.long`): ``demo:motion-clips``, ``demo:motion-clips-long``,
  ``demo:long-docs``, ``demo:scene-docs``, ``demo:long-text``;
- conversations for supervised fine-tuning (:mod:`~mm_lightning.demo.instructions`): ``demo:emoji-chat``.

:func:`demo_folder` and :func:`demo_tokenizer` are the one resolver of demo names: datamodules, mixture sources,
commands and evaluations all ask them. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mm_lightning.demo.corpora import (
    DEMO_IMAGE_TEXTS,
    DEMO_PREFIX,
    DEMO_TEXTS,
    ensure_demo_image_text,
    ensure_demo_text,
    image_demo_tokenizer,
    is_demo_name,
)
from mm_lightning.demo.instructions import DEMO_CHATS, ensure_demo_chat
from mm_lightning.demo.long import LONG_DEMOS, ensure_long_demo
from mm_lightning.errors import ConfigError

DEFAULT_TOKENIZER_DEMO = "demo:sotu"
"""The demo whose tokenizer every demo (and a checkpoint that records none) is tokenized with."""

_FAMILIES: dict[str, tuple[dict, Callable[[str], Path]]] = {
    "text": (DEMO_TEXTS, ensure_demo_text),
    "image_text": (DEMO_IMAGE_TEXTS, ensure_demo_image_text),
    "long": (LONG_DEMOS, ensure_long_demo),
    "chat": (DEMO_CHATS, ensure_demo_chat),
}

__all__ = ["DEFAULT_TOKENIZER_DEMO", "demo_family", "demo_folder", "demo_names", "demo_tokenizer", "is_demo_name"]


def demo_names(family: str | None = None) -> list[str]:
    """Every demo name (``demo:...``), or those of one family (``text``, ``image_text``, ``long``, ``chat``)."""
    return [DEMO_PREFIX + n for f, (demos, _) in _FAMILIES.items() if family in (None, f) for n in demos]


def demo_family(name: str) -> str:
    """The family of ``"demo:<name>"``; a :class:`ConfigError` listing every demo when there is none such."""
    short = name[len(DEMO_PREFIX) :] if is_demo_name(name) else name
    for family, (demos, _) in _FAMILIES.items():
        if short in demos:
            return family
    raise ConfigError(f"Unknown demo {name!r}; available: {', '.join(demo_names())}")


def demo_folder(name: str, family: str | None = None) -> Path:
    """The prepared folder of a demo, built on first use.

    Args:
        name: ``"demo:<name>"``.
        family: the family the caller reads (``text``, ``image_text``, ``long``, ``chat``); another family's demo is
            refused, naming the ones that fit.
    """
    found = demo_family(name)
    if family is not None and found != family:
        raise ConfigError(
            f"{name} is a {found.replace('_', '-')} demo, not {family.replace('_', '-')} data; "
            f"use one of {', '.join(demo_names(family))}"
        )
    return _FAMILIES[found][1](name)


def demo_tokenizer(name: str = DEFAULT_TOKENIZER_DEMO) -> Path:
    """The ``tokenizer.json`` a demo is tokenized with (built on first use)."""
    family = demo_family(name)
    if family == "text":
        return ensure_demo_text(name) / "tokenizer.json"
    if family == "image_text":
        return image_demo_tokenizer(name)
    return ensure_demo_text(DEFAULT_TOKENIZER_DEMO) / "tokenizer.json"
