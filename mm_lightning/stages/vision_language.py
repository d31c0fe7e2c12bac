"""What the stages with a whole VLM share (alignment and the joint stages): its three backbones and its view."""

from __future__ import annotations

import torch

from mm_lightning.models.vlm import VLM
from mm_lightning.stages.base import StageModule
from mm_lightning.tokenizer import IMAGE_ID


class VisionLanguageStage(StageModule):
    """A stage over ``self.llm``, ``self.vit`` and ``self.projector`` (set by the subclass)."""

    llm: torch.nn.Module
    vit: torch.nn.Module
    projector: torch.nn.Module

    def backbones(self) -> dict[str, torch.nn.Module]:
        return {"llm": self.llm, "vit": self.vit, "projector": self.projector}

    @property
    def vlm(self) -> VLM:
        """The assembled model (a view over this stage's backbones, not a second copy)."""
        return VLM(self.llm, self.vit, self.projector, IMAGE_ID)
