"""Checkpoints written by ``mm-lightning convert``: backbones in the layout every stage checkpoint has.

A converted checkpoint holds only weights and the ``"mm_lightning"`` metadata a stage reads
(:func:`mm_lightning.checkpoint.load_backbone`): each backbone's resolved config and key prefix, the RoPE base, the
image preprocessing of a ViT, and ``converted_from`` (what it came from, so an export can write that back). It
loads wherever a stage checkpoint's backbone does: ``llm_checkpoint`` of stage 1, alignment and the joint stages,
``vit_checkpoint`` of alignment, ``vision_checkpoint`` of the joint stages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mm_lightning.atomic_io import write_with
from mm_lightning.checkpoint import META_KEY

CONVERTED_STAGE = "Converted"
"""The ``stage`` a converted checkpoint records (it was written by no stage)."""


def save_backbones(
    path: str | Path,
    backbones: dict[str, tuple[Any, dict[str, Any]]],
    converted_from: dict[str, Any],
    **meta: Any,
) -> None:
    """Write backbones as a checkpoint the stages load from.

    Args:
        path: the ``.ckpt`` file to write (whole or not at all).
        backbones: registry kind -> (config dataclass, state dict), e.g. ``{"llm": (llm.config, llm.state_dict())}``.
        converted_from: plain data on the source (format, path, anything an export needs back).
        meta: further metadata entries (``rope_base``, ``image_preprocessing``, ``tokenizer``).
    """
    state = {
        f"{kind}.{name}": value for kind, (_, module_state) in backbones.items() for name, value in module_state.items()
    }
    block: dict[str, Any] = {
        "stage": CONVERTED_STAGE,
        "global_step": 0,
        "tokens_seen": 0,
        "backbones": {kind: dataclasses.asdict(config) for kind, (config, _) in backbones.items()},
        "prefixes": {kind: f"{kind}." for kind in backbones},
        "converted_from": converted_from,
        **meta,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda file: torch.save({"state_dict": state, META_KEY: block}, file))
