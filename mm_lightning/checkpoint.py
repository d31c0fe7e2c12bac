"""Checkpoint metadata, safe loading, and rebuilding backbones from what a checkpoint recorded.

Every stage checkpoint carries a plain-data block under ``"mm_lightning"``: the stage, the
pipeline-global step, the LR schedule, the resolved backbone configs, the RoPE base, the tokens seen and,
for a stage with a ViT, how its images were cut into patches (:func:`image_preprocessing`). Checkpoints
are loaded with ``weights_only=True`` only, so they must hold nothing but tensors and plain Python data;
:func:`to_plain` makes hyper-parameters so.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_lightning.errors import MMLightningError
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.lora import LoRAConfig, apply_lora, merge_lora
from mm_lightning.models.registry import build_from_config, config_from_dict
from mm_lightning.models.vlm import VLM
from mm_lightning.tokenizer import IMAGE_ID, tokenizer_from_str

META_KEY = "mm_lightning"


class CheckpointError(MMLightningError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit what loads it."""


def to_plain(value: Any) -> Any:
    """Recursively turn dataclasses, tuples and odd objects into dicts, lists and strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items() if not str(k).startswith("_instantiator")}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    return str(value)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` onto the CPU, with a clear error for bad paths.

    The file is memory-mapped: a stage that reads one checkpoint several times (each backbone, the metadata,
    the optimizer state) reads from disk only the tensors it touches. Copy what must outlive the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist (or is a folder: pass the .ckpt file).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): a copy or save that was killed; use another one.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"Checkpoint {path} holds Python objects beyond tensors and plain data, which mm_lightning never loads "
            "(a stage checkpoint has none): it is not a stage checkpoint, or it comes from elsewhere"
        ) from None
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({reason}): it is truncated (a save or copy that was killed) or not a "
            "PyTorch checkpoint"
        ) from None


def checkpoint_meta(checkpoint: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """The ``"mm_lightning"`` metadata block, or a clear error when the file is not a stage checkpoint."""
    if META_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not an mm_lightning stage checkpoint (no {META_KEY!r} metadata).")
    return checkpoint[META_KEY]


def load_backbone(path: str | Path, kind: str, prefix: str | None = None) -> nn.Module:
    """Rebuild the ``kind`` backbone a stage checkpoint recorded and load its weights.

    Args:
        path: a stage checkpoint (``.ckpt``).
        kind: registry kind, e.g. ``"llm"``.
        prefix: key prefix of that backbone in the checkpoint's ``state_dict`` (default: the prefix the checkpoint
            recorded, else ``"<kind>."``).

    Raises:
        CheckpointError: the checkpoint has no such backbone, or its keys do not match the rebuilt module.
    """
    checkpoint = load_checkpoint(path)
    backbones = checkpoint_meta(checkpoint, path).get("backbones", {})
    if kind not in backbones:
        raise CheckpointError(f"{path} records no {kind!r} backbone; it has: {', '.join(backbones) or 'none'}.")
    module = build_from_config(kind, config_from_dict(kind, backbones[kind]))
    if prefix is None:
        prefix = checkpoint_meta(checkpoint, path).get("prefixes", {}).get(kind, f"{kind}.")
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    lora = checkpoint_meta(checkpoint, path).get("lora")
    if lora is not None and lora.get("backbone") == kind:  # a LoRA fine-tune: base weights + adapters, merged
        config = LoRAConfig(**{k: v for k, v in lora.items() if k != "backbone"})
        apply_lora(module, config)
        load_state_dict_strict(module, state, source=f"{path} ({kind} with LoRA adapters)")
        merge_lora(module)
        return module.requires_grad_(True)
    load_state_dict_strict(module, state, source=f"{path} ({kind})")
    return module


def load_vlm(path: str | Path) -> VLM:
    """The VLM (LLM, ViT and projector) a stage checkpoint recorded, in eval mode."""
    return VLM(*(load_backbone(path, kind) for kind in ("llm", "vit", "projector")), IMAGE_ID).eval()


def recorded_tokenizer(source: str | Path | dict[str, Any]):
    """The tokenizer a checkpoint recorded (the one its stage's data was tokenized with), or ``None``.

    Args:
        source: a stage checkpoint (``.ckpt``) or its metadata block (:func:`checkpoint_meta`).
    """
    meta = source if isinstance(source, dict) else checkpoint_meta(load_checkpoint(source), source)
    stored = meta.get("tokenizer")
    return tokenizer_from_str(stored, f"the tokenizer recorded in {_source_name(source)}") if stored else None


def _source_name(source: str | Path | dict[str, Any]) -> str:
    """How messages name a checkpoint given by path or by its metadata block (whose text would fill the screen)."""
    return "the checkpoint" if isinstance(source, dict) else str(source)


def recorded_image_preprocessing(source: str | Path | dict[str, Any]) -> ImagePreprocessing | None:
    """The image preprocessing a checkpoint recorded (``None`` when it records none).

    Args:
        source: a stage checkpoint (``.ckpt``) or its metadata block (:func:`checkpoint_meta`).
    """
    meta = source if isinstance(source, dict) else checkpoint_meta(load_checkpoint(source), source)
    recorded = meta.get("image_preprocessing")
    return ImagePreprocessing(**recorded) if recorded else None


def image_preprocessing(source: str | Path | dict[str, Any]) -> ImagePreprocessing:
    """How the checkpoint's stage cut images into patches, so inference feeds the grids the model trained on.

    A checkpoint written before this was recorded falls back, with a note on stderr, to its ViT config's
    ``patch_size`` and ``max_patches`` (the cap the ViT allows, not necessarily the one it trained with).

    Args:
        source: a stage checkpoint (``.ckpt``) or its metadata block (:func:`checkpoint_meta`).

    Raises:
        CheckpointError: the checkpoint records neither image preprocessing nor a ViT.
    """
    meta = source if isinstance(source, dict) else checkpoint_meta(load_checkpoint(source), source)
    recorded = recorded_image_preprocessing(meta)
    if recorded is not None:
        return recorded
    name = _source_name(source)
    vit = meta.get("backbones", {}).get("vit")
    if vit is None:
        raise CheckpointError(f"{name} has no ViT, so no image preprocessing; pass a checkpoint with a ViT.")
    fallback = ImagePreprocessing(int(vit["patch_size"]), int(vit["max_patches"]))
    print(
        f"note: {name} records no image preprocessing (written before it was recorded); using its ViT config's "
        f"patch_size {fallback.patch_size} and max_patches {fallback.max_patches}.",
        file=sys.stderr,
    )
    return fallback


def load_state_dict_strict(module: nn.Module, state: dict[str, Any], source: str) -> None:
    """``load_state_dict`` that names missing and unexpected keys in one readable error."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: "
            f"missing keys {_abbreviate(missing)}, unexpected keys {_abbreviate(unexpected)}."
        )
    module.load_state_dict(state)


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"


_RUNTIME_FIELDS = {"attn_backend", "rope_base"}  # how a backbone runs, or what RoPEBaseSwitch sets during a stage
_TRAINING_ARGS = ("optimizer", "schedule")


def check_checkpoint_fits(model: nn.Module, path: str | Path, resuming: bool) -> None:
    """Refuse a ``--ckpt_path`` that does not fit the model the config built, naming what differs.

    The checkpoint must be a readable stage checkpoint of the same stage class with the same backbone architectures.
    When ``resuming`` (``fit``), its optimizer and schedule arguments must also be the config's: a resume restores
    the optimizer's state and the LR schedule from the checkpoint, so a changed learning rate would be dropped.

    Raises:
        CheckpointError: with one line saying what differs and what to do.
    """
    checkpoint = load_checkpoint(path)
    meta = checkpoint_meta(checkpoint, path)
    stage = type(model).__name__
    if meta.get("stage") != stage:
        raise CheckpointError(
            f"{path} is a {meta.get('stage')} checkpoint, but the config builds a {stage}; pass a checkpoint of this "
            "stage, or the config of the stage that wrote it"
        )
    differences = []
    built = {kind: dataclasses.asdict(module.config) for kind, module in model.backbones().items()}
    for kind, saved in meta.get("backbones", {}).items():
        config = built.get(kind, {})
        differences += [
            f"{kind}.{name} {saved[name]!r} there, {config.get(name)!r} here"
            for name in sorted(saved) if name not in _RUNTIME_FIELDS and to_plain(config.get(name)) != saved[name]
        ]  # fmt: skip
    if differences:
        raise CheckpointError(f"{path} does not fit the model the config builds: {'; '.join(differences)}")
    if not resuming:
        return
    saved_args, config_args = checkpoint.get("hyper_parameters", {}), to_plain(dict(getattr(model, "hparams", {})))
    groups = [g for g in _TRAINING_ARGS if isinstance(saved_args.get(g), dict) and isinstance(config_args.get(g), dict)]
    changed = [
        f"{group}.{name} {saved_args[group].get(name)!r} there, {value!r} here"
        for group in groups for name, value in config_args[group].items() if saved_args[group].get(name) != value
    ]  # fmt: skip
    if changed:
        raise CheckpointError(
            f"resuming from {path} keeps the optimizer state and LR schedule it trained with, but the config changes "
            f"them ({'; '.join(changed)}); resume with the values it trained with, or start a fresh run "
            "(no --ckpt_path) with the new ones"
        )
