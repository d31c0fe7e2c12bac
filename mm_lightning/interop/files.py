"""The files other frameworks exchange weights in: a folder's ``config.json``, safetensors (one file or shards with
``model.safetensors.index.json``), and the one-line error a conversion raises when names or shapes do not fit.

Hugging Face folders follow ``save_pretrained``'s layout; everything is read and written locally, nothing is ever
downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mm_lightning.atomic_io import write_bytes
from mm_lightning.errors import MMLightningError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes an export may write, by the name ``config.json`` gives them."""


class ConversionError(MMLightningError, ValueError):
    """Weights or a config that do not fit the model they are converted to or from; the message names what differs."""


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of ``folder`` as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json: pass the folder a save_pretrained or an export wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not JSON ({error})") from None


def write_json(path: str | Path, value: Mapping[str, Any]) -> None:
    """``value`` as indented JSON at ``path`` (whole or not at all)."""
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def read_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder``'s ``model.safetensors``, or of the shards its index names."""
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / SAFETENSORS).is_file():
        shards = [SAFETENSORS]
    else:
        raise ConversionError(f"{folder} has no {SAFETENSORS} (nor {SAFETENSORS_INDEX}); only safetensors are read")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            tensors.update(load_file(folder / shard))
        except (SafetensorError, OSError) as error:
            raise ConversionError(f"{folder / shard} cannot be read as safetensors ({error})") from None
    return tensors


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Save ``tensors`` (each its own contiguous copy, as safetensors wants) with ``save_pretrained``'s metadata."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    save_file({name: t.detach().contiguous().clone() for name, t in tensors.items()}, temporary, {"format": "pt"})
    temporary.replace(path)


def check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str, target: str
) -> None:
    """Raise one :class:`ConversionError` naming every missing, unexpected or mis-shaped tensor.

    Args:
        tensors: the tensors found, by name.
        expected: the shape each name must have.
        source: what the tensors came from, e.g. a folder.
        target: what they should fit, e.g. ``"the Llama its config.json describes"``.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{name} {list(tensors[name].shape)} (expected {list(shape)})"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != tuple(shape)
    ]
    problems = [
        f"{label} {_abbreviate(names)}"
        for label, names in (("shapes", shapes), ("missing", missing), ("unexpected", unexpected))
        if names
    ]
    if problems:
        raise ConversionError(f"{source} does not fit {target}: {'; '.join(problems)}")


def check_output(path: Path, overwrite: bool, names: tuple[str, ...] = ()) -> None:
    """Refuse to replace an existing file ``path`` (or, for a folder, its ``names``) unless ``overwrite``."""
    existing = [path] if path.is_file() else [path / name for name in names if (path / name).exists()]
    if existing and not overwrite:
        raise ConversionError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out")


def _abbreviate(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... {len(items) - limit} more' if len(items) > limit else ''}]"
