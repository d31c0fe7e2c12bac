"""Stage 1 of the Kimi-VL recipe: text pre-training of the LLM on packed token streams."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torchmetrics import MeanMetric

from mm_lightning.errors import ConfigError
from mm_lightning.eval.predictions import document_losses
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, NextTokenLoss
from mm_lightning.models.registry import build_backbone
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.base import StageModule


class TextPretrainStage(StageModule):
    """Next-token training of the ``llm`` backbone on packed text rows.

    Args:
        llm: LLM preset name in the backbone registry (``tiny``, ``small``, ``1b``, ...).
        llm_overrides: config fields to override on the preset, e.g. ``{n_layers: 6}``.
        optimizer: optimizer choice and hyper-parameters.
        schedule: LR schedule piece (WSD or cosine) over the pipeline-global step.
        global_step_offset: pipeline-global step at which this stage starts.
        activation_checkpointing: recompute block activations in backward.
        compile: ``torch.compile`` each block.
        loss_chunk_size: tokens per chunk of the output layer's loss (its logits never exist whole); 0 or null:
            the whole row's logits at once.
        llm_checkpoint: start from the LLM of this checkpoint (a stage's, or one ``mm-lightning convert import-llama``
            wrote from a Hugging Face Llama): its recorded architecture replaces ``llm``, and ``llm_overrides`` stays
            unset. Weights only: the optimizer and LR schedule are this stage's.
    """

    def __init__(
        self,
        llm: str = "tiny",
        llm_overrides: dict[str, Any] | None = None,
        optimizer: OptimizerConfig | None = None,
        schedule: LRSchedule | None = None,
        global_step_offset: int = 0,
        activation_checkpointing: bool = False,
        compile: bool = False,
        loss_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        llm_checkpoint: str | None = None,
    ) -> None:
        super().__init__(optimizer, schedule, global_step_offset, activation_checkpointing, compile)
        self.save_hyperparameters()
        if llm_checkpoint is None:
            self.llm = build_backbone("llm", llm, **(llm_overrides or {}))
        elif llm_overrides:
            raise ConfigError(
                "llm_overrides change a preset; with llm_checkpoint the LLM is the checkpoint's: unset them"
            )
        else:
            self.llm = self.inherit_backbone(llm_checkpoint, "llm")
        self.loss = NextTokenLoss(loss_chunk_size)
        self.val_loss = MeanMetric()

    def backbones(self) -> dict[str, torch.nn.Module]:
        return {"llm": self.llm}

    def setup(self, stage: str) -> None:
        self.check_vocab_fits(self.llm.config.vocab_size, "llm_overrides")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], seq_ids=batch["seq_ids"])

    def next_token_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of a packed batch, from the final hidden states (chunked: no whole logits)."""
        head_loss = partial(self.loss.from_hidden, labels=batch["labels"])
        return self.llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], seq_ids=batch["seq_ids"],
                        head_loss=head_loss)  # fmt: skip

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids = batch["input_ids"]  # [B, T]
        self.flops_per_batch = self.llm.flops_per_token(input_ids.shape[1]) * input_ids.numel()
        losses = self.next_token_loss(batch)
        self.log_losses(losses, "train", sync_dist=True)
        self.count_tokens(input_ids.numel())
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.next_token_loss(batch)
        self.val_loss.update(losses["loss"], weight=batch["labels"].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.report_validation({"val/loss": loss.item(), "val/ppl": math.exp(loss.item())}, headline="val/ppl")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """Next-token loss and perplexity of each document (or piece of one) in the batch's rows, with its text."""
        return document_losses(batch["input_ids"], self(batch), batch["labels"], batch["seq_ids"], self.data_tokenizer)
