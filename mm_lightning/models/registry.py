"""The backbone registry: every backbone is built by kind and preset name, plus field overrides.

The built-in backbones register themselves when ``mm_lightning.models`` is imported, which any import of this
module does first (it lives in that package), so the registry never imports a model and the models import only
this module: no import circle.

One registry per axis, failing loudly on duplicates and unknown names (torchtitan's habit, not timm's
warning). A backbone kind pairs an architecture dataclass with a builder; presets are plain instances of
that dataclass (litgpt's ``name_to_config``). Stages and users only ever call :func:`build_backbone`:

    >>> llm = build_backbone("llm", "tiny", n_layers=6)
    >>> get_preset("llm", "tiny").d_model
    256

Registering a backbone or a preset is one decorator each::

    @register_backbone("llm", LLMConfig)
    class LLM(nn.Module): ...

    @register_preset("llm", "my-300m")
    def my_300m() -> LLMConfig:
        return LLMConfig(n_layers=24, d_model=1024, ...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mm_lightning.errors import ConfigError


@dataclass
class _Kind:
    config_cls: type
    builder: Callable[[Any], nn.Module]
    presets: dict[str, Callable[[], Any]] = field(default_factory=dict)


_KINDS: dict[str, _Kind] = {}


def register_backbone(kind: str, config_cls: type) -> Callable:
    """Decorator registering a builder (a class or function taking the config) as backbone ``kind``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_backbone({kind!r}): config_cls must be a dataclass, got {config_cls!r}")

    def decorate(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if kind in _KINDS:
            raise ValueError(f"Backbone kind {kind!r} is already registered (by {_KINDS[kind].builder!r}).")
        _KINDS[kind] = _Kind(config_cls=config_cls, builder=builder)
        return builder

    return decorate


def register_preset(kind: str, name: str) -> Callable:
    """Decorator registering a zero-argument function that returns the preset's config as ``kind/name``."""

    def decorate(make_config: Callable[[], Any]) -> Callable[[], Any]:
        presets = _kind(kind).presets
        if name in presets:
            raise ValueError(f"Preset {kind}/{name} is already registered.")
        presets[name] = make_config
        return make_config

    return decorate


def list_backbones() -> dict[str, list[str]]:
    """Every registered kind with its preset names, e.g. ``{"llm": ["tiny", "small", "1b"]}``."""
    return {kind: list(entry.presets) for kind, entry in _KINDS.items()}


def get_preset(kind: str, name: str) -> Any:
    """A fresh copy of the preset's config dataclass (mutating it never changes the registry)."""
    presets = _kind(kind).presets
    if name not in presets:
        raise ConfigError(f"Unknown {kind} preset {name!r}; known presets: {', '.join(sorted(presets))}.")
    return presets[name]()


def resolve_config(kind: str, name: str, **overrides: Any) -> Any:
    """The preset's config with ``overrides`` applied; unknown fields fail with the list of known ones."""
    config = get_preset(kind, name)
    settable = {f.name for f in dataclasses.fields(config) if f.init}
    unknown = sorted(set(overrides) - settable)
    if unknown:
        raise ConfigError(f"Unknown {kind} config field(s) {unknown}; known fields: {', '.join(sorted(settable))}.")
    return dataclasses.replace(config, **overrides)


def config_from_dict(kind: str, values: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from the plain dict a checkpoint recorded (derived fields are recomputed)."""
    config_cls = _kind(kind).config_cls
    settable = {f.name for f in dataclasses.fields(config_cls) if f.init}
    return config_cls(**{k: v for k, v in values.items() if k in settable})


def build_backbone(kind: str, name: str, **overrides: Any) -> nn.Module:
    """Build the ``kind/name`` backbone, with config fields overridden by keyword."""
    return build_from_config(kind, resolve_config(kind, name, **overrides))


def build_from_config(kind: str, config: Any) -> nn.Module:
    """Build a backbone of ``kind`` from an already resolved config dataclass."""
    return _kind(kind).builder(config)


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ConfigError(f"Unknown backbone kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}.")
    return _KINDS[kind]
