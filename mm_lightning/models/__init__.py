"""Pure ``nn.Module`` backbones (no Lightning); importing this package registers them."""

from mm_lightning.models.llm import LLM, LLMConfig

__all__ = ["LLM", "LLMConfig"]
