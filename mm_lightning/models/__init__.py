"""Pure ``nn.Module`` backbones (no Lightning); importing this package registers them."""

from mm_lightning.models.coca import CoCaConfig, CoCaHeads
from mm_lightning.models.llm import LLM, LLMConfig
from mm_lightning.models.projector import Projector, ProjectorConfig
from mm_lightning.models.registry import build_backbone, build_from_config, get_preset, list_backbones
from mm_lightning.models.vit import ViT, ViTConfig

__all__ = [
    "CoCaConfig", "CoCaHeads", "LLM", "LLMConfig", "Projector", "ProjectorConfig", "ViT", "ViTConfig",
    "build_backbone", "build_from_config", "get_preset", "list_backbones",
]  # fmt: skip
