"""One thin LightningModule per stage of the recipe, over a shared base."""

from mm_lightning.stages.align import AlignStage
from mm_lightning.stages.base import StageModule
from mm_lightning.stages.joint import JointStage
from mm_lightning.stages.sft import SFTStage
from mm_lightning.stages.text_pretrain import TextPretrainStage
from mm_lightning.stages.vit_coca import ViTCoCaStage

__all__ = ["AlignStage", "JointStage", "SFTStage", "StageModule", "TextPretrainStage", "ViTCoCaStage"]
