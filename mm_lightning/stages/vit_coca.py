"""Stage 2a of the Kimi-VL recipe: the ViT learns from image-caption pairs with a CoCa loss.

Native-resolution images are packed into one sequence (NaViT); the loss is SigLIP's sigmoid contrastive
loss plus 2 x the caption loss of a tiny text decoder (MoonViT's recipe, after CoCa, Yu et al. 2022).
Validation reports zero-shot image->text and text->image recall@1/@5 over the whole split.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torchmetrics import MeanMetric

from mm_lightning.eval.predictions import embedding_records
from mm_lightning.eval.retrieval import retrieval_recall
from mm_lightning.losses import CoCaLoss
from mm_lightning.models.flops import dense_flops_per_token, vit_flops
from mm_lightning.models.llm import HeadLoss
from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.base import StageModule


class ViTCoCaStage(StageModule):
    """CoCa training of the ``vit`` backbone with ``coca`` text heads.

    Args:
        vit: ViT preset name (``tiny``, ``small``, ``so400m``).
        vit_overrides: ViT config fields to override.
        coca: CoCa heads preset name; its ``vision_dim`` follows the ViT's width.
        coca_overrides: CoCa config fields to override (e.g. ``vocab_size`` for another tokenizer).
        contrastive: ``sigmoid`` (SigLIP, the default) or ``softmax`` (CLIP).
        caption_weight: weight of the caption loss (Kimi-VL: 2.0).
        global_negatives: under data parallelism, contrast each rank's pairs with every rank's embeddings (the
            global batch's negatives, as one process would see them); off: the local batch's only.
        optimizer: optimizer choice and hyper-parameters.
        schedule: LR schedule piece; the ViT stages count their own steps.
        activation_checkpointing: recompute block activations in backward.
        compile: ``torch.compile`` each block.
    """

    def __init__(
        self,
        vit: str = "tiny",
        vit_overrides: dict[str, Any] | None = None,
        coca: str = "tiny",
        coca_overrides: dict[str, Any] | None = None,
        contrastive: str = "sigmoid",
        caption_weight: float = 2.0,
        global_negatives: bool = True,
        optimizer: OptimizerConfig | None = None,
        schedule: LRSchedule | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, schedule, 0, activation_checkpointing, compile)
        self.save_hyperparameters()
        self.vit = build_backbone("vit", vit, **(vit_overrides or {}))
        coca_fields = {"vision_dim": self.vit.config.d_model, **(coca_overrides or {})}
        self.coca = build_backbone("coca", coca, **coca_fields)
        self.loss = CoCaLoss(contrastive=contrastive, caption_weight=caption_weight, global_negatives=global_negatives)
        self.val_caption = MeanMetric()
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    def backbones(self) -> dict[str, torch.nn.Module]:
        return {"vit": self.vit, "coca": self.coca}

    def configure_model(self) -> None:
        super().configure_model()
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            self.loss.contrastive.group = self.device_mesh["data_parallel"].get_group()  # negatives from each replica

    def setup(self, stage: str) -> None:
        self.check_vocab_fits(self.coca.config.vocab_size, "coca_overrides")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A full resume also reads a checkpoint from before FSDP2 support, whose logit scale and bias were 0-d: their
        moments become ``[1]`` like them (``CoCaHeads`` reshapes the weights; no other parameter is 0-d)."""
        super().on_load_checkpoint(checkpoint)
        for optimizer_state in checkpoint.get("optimizer_states", []):
            for moments in optimizer_state.get("state", {}).values():
                for key, value in moments.items():
                    if key != "step" and isinstance(value, torch.Tensor) and value.dim() == 0:
                        moments[key] = value.reshape(1)

    def forward(self, batch: dict[str, Any], caption_loss: HeadLoss | None = None) -> dict[str, Any]:
        """``CoCaHeads``' outputs over the ViT's packed patch features (see its ``caption_loss``)."""
        features = self.vit(batch["patches"], batch["grid_hw"], batch["seq_ids"])  # [1, N, D]
        return self.coca(features, batch["seq_ids"], batch["caption_ids"], batch["caption_mask"], caption_loss)

    def coca_loss(self, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The heads' outputs and the loss terms of a batch, the caption term chunked from the decoder's states."""
        caption_ids, caption_mask = batch["caption_ids"], batch["caption_mask"]
        outputs = self(batch, self.loss.caption_head_loss(caption_ids, caption_mask))
        return outputs, self.loss(outputs, caption_ids, caption_mask)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.coca_loss(batch)[1]
        # the ViT over each image's patches; the CoCa heads over every caption position (their attention left out)
        heads = batch["caption_ids"].numel() * dense_flops_per_token(self.coca)
        self.flops_per_batch = vit_flops(self.vit, batch["grid_hw"]) + heads
        self.log_losses(losses, "train", sync_dist=True)
        self.count_tokens(batch["patches"].shape[1] + int(batch["caption_mask"].sum()))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs, losses = self.coca_loss(batch)
        self.val_caption.update(losses["caption"], weight=batch["caption_ids"].shape[0])
        self._val_outputs.append((outputs["image_embed"].cpu(), outputs["text_embed"].cpu(), list(batch["captions"])))

    def on_validation_epoch_end(self) -> None:
        image_embed, text_embed, captions = self._gather_val_outputs()
        self._val_outputs.clear()
        metrics = {f"val/{k}": v for k, v in retrieval_recall(image_embed, text_embed, captions).items()}
        metrics["val/caption"] = self.val_caption.compute().item()
        self.val_caption.reset()
        self.report_validation(metrics, headline="val/i2t_r@1")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per image-caption pair: both embeddings, their similarity, and the batch's caption nearest the image."""
        outputs = self(batch)
        return embedding_records(outputs["image_embed"], outputs["text_embed"], list(batch["captions"]))

    def _gather_val_outputs(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        local = (
            torch.cat([o[0] for o in self._val_outputs]),
            torch.cat([o[1] for o in self._val_outputs]),
            [c for o in self._val_outputs for c in o[2]],
        )
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return (
            torch.cat([g[0] for g in gathered]),
            torch.cat([g[1] for g in gathered]),
            [c for g in gathered for c in g[2]],
        )
