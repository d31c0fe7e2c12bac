"""Stages 3-5 of the Kimi-VL recipe: joint pre-training, joint cooldown, joint long-context.

All three train the whole VLM (LLM + ViT + projector) on packed rows of mixed text and multimodal samples
(``MixtureDataModule``); they differ only in their data and callbacks: ``LRSchedulerResume`` and
``ProgressiveMixing`` (pre-training), ``ReWarmup`` (cooldown), ``RoPEBaseSwitch`` (long context). The LLM
comes from ``llm_checkpoint`` and the ViT and projector from ``vision_checkpoint`` (the alignment stage's, or
the previous joint stage's: then both are the same file). With ``handoff: continue`` the optimizer moments
of matching parameters come along (``handoff.py``) and the global step and schedule continue; with
``weights_only`` the stage starts its own schedule from step 0. A full resume of the same stage is
Lightning's ``--ckpt_path``; ``JointStage.load_from_checkpoint`` reads neither input checkpoint (it rebuilds the
backbones from the configs the loaded checkpoint recorded).

A batch without images skips the vision tower, so its parameters get no gradient and no update. Under
FSDP2 a rank without images runs it on one dummy image when another rank has some (its tokens enter the LLM
but replace nothing, so their gradients are zeros), since every rank must take part in the vision tower's
collectives, in the same order.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from mm_lightning.callbacks.lr_schedule import LRSchedulerResume
from mm_lightning.errors import ConfigError
from mm_lightning.eval.predictions import attach_captions, document_losses
from mm_lightning.handoff import HANDOFF_MODES, carry_optimizer_state, check_optimizer_state
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE, NextTokenLoss
from mm_lightning.models.llm import HeadLoss
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.vision_language import VisionLanguageStage
from mm_lightning.tokenizer import IMAGE_ID

VAL_GROUPS = ("text", "multimodal")


class JointStage(VisionLanguageStage):
    """The whole VLM trains on mixed text and multimodal batches.

    Args:
        llm_checkpoint: the checkpoint the LLM comes from (stage 1's, or the previous joint stage's).
        vision_checkpoint: the checkpoint the ViT and projector come from (default: ``llm_checkpoint``).
        handoff: ``continue`` (weights, matching optimizer moments, global step and schedule) or
            ``weights_only`` (weights; fresh optimizer; this stage's ``schedule`` from step 0).
        optimizer: optimizer choice and hyper-parameters.
        schedule: this stage's LR schedule when it does not continue an earlier one.
        activation_checkpointing: recompute block activations in backward.
        compile: ``torch.compile`` each block.
        loss_chunk_size: tokens per chunk of the output layer's loss (its logits never exist whole); 0 or null:
            the whole batch's logits at once.
    """

    def __init__(
        self,
        llm_checkpoint: str,
        vision_checkpoint: str | None = None,
        handoff: str = "continue",
        optimizer: OptimizerConfig | None = None,
        schedule: LRSchedule | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        loss_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(optimizer, schedule, 0, activation_checkpointing, compile)
        if handoff not in HANDOFF_MODES:
            raise ConfigError(
                f"handoff={handoff!r}; choose one of {', '.join(HANDOFF_MODES)} (full resume: --ckpt_path)"
            )
        self.save_hyperparameters()
        self.handoff = handoff
        self.checkpoints = dict.fromkeys([llm_checkpoint, vision_checkpoint or llm_checkpoint])  # ordered, unique
        self.llm = self.inherit_backbone(llm_checkpoint, "llm")
        self.vit = self.inherit_backbone(vision_checkpoint or llm_checkpoint, "vit")
        self.projector = self.inherit_backbone(vision_checkpoint or llm_checkpoint, "projector")
        self.inherit_image_preprocessing(vision_checkpoint or llm_checkpoint)
        self.loss = NextTokenLoss(loss_chunk_size)
        self._val_sums: dict[int, list[float]] = {}

    def setup(self, stage: str) -> None:
        self.check_vocab_fits(self.llm.config.vocab_size, "llm")
        resumed = any(isinstance(c, LRSchedulerResume) for c in self.trainer.callbacks)
        if stage == "fit" and self.handoff == "continue":
            for path in self.checkpoints:  # fail before training, not at its first step
                check_optimizer_state(path)
            if not resumed:
                LRSchedulerResume(next(iter(self.checkpoints))).apply(self)

    def on_train_start(self) -> None:
        if self.handoff != "continue" or self.trainer.ckpt_path is not None:  # a full resume has its own state
            return
        carried: set[str] = set()
        for path in self.checkpoints:
            carried.update(carry_optimizer_state(self.trainer.optimizers[0], self, path)[0])
        fresh = [n for n, p in self.named_parameters() if p.requires_grad and n not in carried]
        rank_zero_info(f"JointStage: optimizer moments carried for {len(carried)} parameters, {len(fresh)} fresh")

    def next_token_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Next-token loss of a packed mixed batch (labels already ignore images, prompts and padding), chunked."""
        return self.logits(batch, head_loss=partial(self.loss.from_hidden, labels=batch["labels"]))["loss"]

    def logits(self, batch: dict[str, Any], head_loss: HeadLoss | None = None) -> Any:
        """Next-token logits ``[R, L, V]`` of a packed mixed batch, its images spliced in; ``head_loss``'s result
        instead when given (see ``LLM.forward``)."""
        has_images = batch.get("patches") is not None
        any_images = has_images
        if self.trainer.world_size > 1:  # every rank decides together, then calls the same collectives in order
            any_images = self.trainer.strategy.reduce_boolean_decision(has_images, all=False)
        tokens = None
        if any_images:  # the vision tower first, on a dummy image where this rank has none
            images = (batch["patches"], batch["grid_hw"], batch["patch_seq_ids"]) if has_images else None
            tokens = self.vlm.image_tokens(*(images or self.dummy_image()))  # [n, d]
        replace = None
        if tokens is not None:
            is_image = batch["input_ids"] == IMAGE_ID  # [R, L]; all False on a rank with the dummy image
            if has_images and int(is_image.sum()) != tokens.shape[0]:
                raise ValueError(f"{int(is_image.sum())} <|image|> positions for {tokens.shape[0]} image tokens")
            # the dummy's tokens enter the LLM too (replacing nothing): their zero gradients then reach the vision
            # tower at the same point of the backward pass as real ones, and FSDP2 reduces in the same order
            replace = (is_image, tokens)
        return self.llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], seq_ids=batch["seq_ids"],
                        replace_embeds=replace, head_loss=head_loss)  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.next_token_loss(batch)
        input_ids = batch["input_ids"]  # [R, L]
        grid_hw = batch["grid_hw"] if batch.get("patches") is not None else None
        self.count_flops(input_ids.numel(), input_ids.shape[1], grid_hw)
        self.log_losses({"loss": loss}, "train", sync_dist=True)
        self.count_tokens(int(batch["input_ids"].numel()))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        with torch.no_grad():
            loss = self.next_token_loss(batch)
        targets = int((batch["labels"] >= 0).sum())
        sums = self._val_sums.setdefault(dataloader_idx, [0.0, 0])
        sums[0] += float(loss) * targets
        sums[1] += targets

    def on_validation_epoch_end(self) -> None:
        groups = getattr(self.trainer.datamodule, "val_groups", VAL_GROUPS[:1])
        sets = getattr(self.trainer.datamodule, "val_set_names", None) or [None] * len(groups)
        metrics = {}
        for index, (total, count) in sorted(self._val_sums.items()):
            mean = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            mean = self.trainer.strategy.reduce(mean, reduce_op="sum") if self.trainer.world_size > 1 else mean
            loss = (mean[0] / mean[1].clamp(min=1)).item()
            suffix = f"_{sets[index]}" if sets[index] else ""  # the validation set: distinct sets, distinct tags
            metrics[f"val/{groups[index]}_loss{suffix}"] = loss
            if groups[index] == "text":
                metrics[f"val/text_ppl{suffix}"] = float(torch.tensor(loss).exp())
        self._val_sums.clear()
        if metrics:
            self.report_validation(metrics, headline=next(iter(metrics)))

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per packed document: next-token loss and perplexity, its text, and greedy captions of its images."""
        has_images = batch.get("patches") is not None
        images = (batch["patches"], batch["grid_hw"], batch["patch_seq_ids"]) if has_images else None
        captions = self.caption_batch_images(images)
        records = document_losses(batch["input_ids"], self.logits(batch), batch["labels"], batch["seq_ids"],
                                  self.data_tokenizer)  # fmt: skip
        attach_captions(records, captions, [] if images is None else self.image_token_counts(images[1]))
        group = getattr(self.trainer.datamodule, "val_groups", VAL_GROUPS[:1])[dataloader_idx]
        return [{"group": group, **record} for record in records]
