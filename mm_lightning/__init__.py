"""mm_lightning: the Kimi-VL staged training recipe for vision-language models, on PyTorch Lightning."""

import importlib

from mm_lightning.models.registry import build_backbone, get_preset, list_backbones, register_backbone, register_preset

__version__ = "0.1.0"
__all__ = [
    "LoRAConfig", "Model", "build_backbone", "get_preset", "list_backbones", "load", "register_backbone",
    "register_preset", "__version__",
]  # fmt: skip
_API = {"load": "mm_lightning.api", "Model": "mm_lightning.api", "LoRAConfig": "mm_lightning.models.lora"}


def __getattr__(name: str) -> object:
    """``mm_lightning.load`` & co., imported on first use: ``import mm_lightning`` alone (as the data preparation
    does) stays free of Lightning."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mm_lightning' has no attribute {name!r}")
