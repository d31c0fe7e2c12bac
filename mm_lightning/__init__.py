"""mm_lightning: the Kimi-VL staged training recipe for vision-language models, on PyTorch Lightning."""

from mm_lightning.models.registry import build_backbone, get_preset, list_backbones, register_backbone, register_preset

__version__ = "0.1.0"
__all__ = ["build_backbone", "get_preset", "list_backbones", "register_backbone", "register_preset", "__version__"]
