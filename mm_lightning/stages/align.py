"""Stage 2b of the Kimi-VL recipe: align the CoCa-trained ViT to the frozen stage-1 LLM.

The LLM comes from the text stage's checkpoint and the ViT from the CoCa stage's, each rebuilt from the
configuration its checkpoint recorded; a new projector (pixel shuffle + MLP) joins them. The LLM is frozen
(no gradients, no optimizer state); the ViT and projector learn to caption images through it. The LR
schedule is this stage's own: it does not continue stage 1's. ``AlignStage.load_from_checkpoint`` reads neither
input checkpoint: it rebuilds the backbones from the configs the loaded checkpoint recorded.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torchmetrics import MeanMetric

from mm_lightning.data.caption_rows import caption_rows
from mm_lightning.eval.predictions import document_losses
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, NextTokenLoss
from mm_lightning.models.llm import HeadLoss
from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.vision_language import VisionLanguageStage
from mm_lightning.tokenizer import IMAGE_ID


class AlignStage(VisionLanguageStage):
    """Captioning through the frozen LLM trains the ViT and the projector.

    Args:
        llm_checkpoint: a stage-1 (text pre-training) checkpoint.
        vit_checkpoint: a stage-2a (ViT CoCa) checkpoint.
        projector: projector preset; its widths follow the two checkpoints' backbones.
        projector_overrides: projector config fields to override (e.g. ``shuffle_factor``).
        optimizer: optimizer choice and hyper-parameters.
        schedule: this stage's own LR schedule.
        activation_checkpointing: recompute block activations in backward.
        compile: ``torch.compile`` each block.
        loss_chunk_size: tokens per chunk of the output layer's loss (its logits never exist whole); 0 or null:
            the whole batch's logits at once.
        freeze_vit: freeze the ViT too, so that only the projector learns: a step costs a fifth less (no backward
            through the ViT) and the ViT keeps what stage 2a taught it exactly.
    """

    def __init__(
        self,
        llm_checkpoint: str,
        vit_checkpoint: str,
        projector: str = "tiny",
        projector_overrides: dict[str, Any] | None = None,
        optimizer: OptimizerConfig | None = None,
        schedule: LRSchedule | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        loss_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        freeze_vit: bool = False,
    ) -> None:
        super().__init__(optimizer, schedule, 0, activation_checkpointing, compile)
        self.save_hyperparameters()
        self.llm = self.inherit_backbone(llm_checkpoint, "llm").requires_grad_(False)
        self.freeze_vit = freeze_vit
        self.vit = self.inherit_backbone(vit_checkpoint, "vit").requires_grad_(not freeze_vit)
        self.inherit_image_preprocessing(vit_checkpoint)
        widths = {"vision_dim": self.vit.config.d_model, "llm_dim": self.llm.config.d_model}
        self.projector = build_backbone("projector", projector, **{**widths, **(projector_overrides or {})})
        self.loss = NextTokenLoss(loss_chunk_size)
        self.val_loss = MeanMetric()

    def setup(self, stage: str) -> None:
        self.check_vocab_fits(self.llm.config.vocab_size, "llm")

    def on_train_epoch_start(self) -> None:
        self.llm.eval()  # frozen: no dropout or norm statistics to update, and none to drift
        if self.freeze_vit:
            self.vit.eval()

    def caption_logits(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch's captioning rows (:func:`caption_rows`: one packed sequence per image) and their logits."""
        rows = caption_rows(batch, self.projector.num_tokens, IMAGE_ID)
        return rows, self.caption_forward(batch, rows)  # [1, T, V]

    def caption_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Next-token loss over the captions given the images (chunked), and the number of caption targets."""
        rows = caption_rows(batch, self.projector.num_tokens, IMAGE_ID)
        losses = self.caption_forward(batch, rows, partial(self.loss.from_hidden, labels=rows["labels"]))
        return losses["loss"], int((rows["labels"] >= 0).sum())

    def caption_forward(
        self, batch: dict[str, Any], rows: dict[str, torch.Tensor], head_loss: HeadLoss | None = None
    ) -> Any:
        """The VLM over the captioning ``rows`` of ``batch``'s images: logits, or ``head_loss``'s result."""
        return self.vlm(rows["input_ids"], batch["patches"], batch["grid_hw"], batch["seq_ids"],
                        position_ids=rows["position_ids"], seq_ids=rows["seq_ids"], head_loss=head_loss)  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, targets = self.caption_loss(batch)
        # the caption rows: per image its placeholders and both markers, then its caption and EOD, less one token
        tokens = sum(self.image_token_counts(batch["grid_hw"])) + int(batch["caption_mask"].sum())
        self.count_flops(tokens, round(tokens / batch["caption_ids"].shape[0]), batch["grid_hw"])
        self.log_losses({"caption": loss, "loss": loss}, "train", sync_dist=True)
        self.count_tokens(batch["patches"].shape[1] + targets)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, targets = self.caption_loss(batch)
        self.val_loss.update(loss, weight=targets)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.report_validation({"val/caption": loss.item()}, headline="val/caption")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: its greedy caption, the reference caption, and the reference's loss given the image."""
        captions = self.caption_batch_images((batch["patches"], batch["grid_hw"], batch["seq_ids"]))
        rows, logits = self.caption_logits(batch)
        losses = [doc["loss"] for doc in document_losses(rows["input_ids"], logits, rows["labels"], rows["seq_ids"])]
        return [{"caption": caption, "reference": reference, "reference_loss": loss}
                for caption, reference, loss in zip(captions, batch["captions"], losses, strict=True)]  # fmt: skip
