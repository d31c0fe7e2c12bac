"""Supervised fine-tuning after the recipe's pre-training: the VLM learns to answer in conversations.

The stage starts from any VLM stage checkpoint (alignment, joint, cooldown, long context) and trains on packed chat
samples (:class:`~mm_lightning.data.ChatDataModule`: the template of :mod:`mm_lightning.chat`, loss on the assistant's
answers only) with the joint stages' next-token loss. Two ways to train:

- **LoRA** (``lora:``, the default in the configs): rank-``r`` adapters on the LLM's attention and MLP projections
  (:mod:`mm_lightning.models.lora`), everything else frozen. Checkpoints hold the frozen base weights and the adapters;
  every loader of this project (``load_backbone``, ``generate``, the Python API) merges them into plain weights, and
  :meth:`save_adapters` writes the adapters alone (a few percent of the model).
- **Full fine-tuning** (``lora: null``): every LLM weight trains; ``train_vision`` adds the ViT and projector.

Validation reports the answer-token loss (``val/chat_loss``) and the exact-match share of greedy answers to the held-out
questions (``val/exact_match``, answers normalised by :func:`mm_lightning.chat.is_exact_match`), on the first
``exact_match_prompts`` of them, before training (the sanity validation) and at every validation. Beside it, what
needs no image: the same questions asked with another question's images (``val/exact_match_swapped_images``) and the
best constant answer per question kind (``val/exact_match_majority``). Exact match above both is what the images
bought; a model that ignores its images scores the same with swapped ones. The first of rank zero's questions and
their answers go to TensorBoard's text tab (``val/answer_samples``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mm_lightning.callbacks.tensorboard_media import log_text_table, split_name
from mm_lightning.chat import is_exact_match, normalize_answer
from mm_lightning.checkpoint import to_plain
from mm_lightning.errors import ConfigError
from mm_lightning.generation.chat import answer_prompts
from mm_lightning.losses.next_token import DEFAULT_CHUNK_SIZE
from mm_lightning.models.lora import LoRAConfig, apply_lora, count_trainable, merge_lora, save_adapters
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages.joint import JointStage
from mm_lightning.tokenizer import decode_generated

ANSWER_SAMPLES = 8
"""Held-out questions shown in TensorBoard's text tab at each validation, with the greedy answers."""
ANSWER_HEADER = ("conversation", "reference answer", "greedy answer", "with another question's images")


class SFTStage(JointStage):
    """Chat fine-tuning of a VLM checkpoint, with LoRA adapters or in full.

    Args:
        checkpoint: a VLM stage checkpoint (the LLM, ViT and projector all come from it).
        lora: adapter rank, alpha, dropout and target projections; ``None`` trains the LLM in full.
        train_vision: also train the ViT and projector (full fine-tuning only).
        exact_match_prompts: held-out questions answered greedily at each validation (0: none).
        max_answer_tokens: most tokens of a generated answer.
        optimizer: optimizer choice and hyper-parameters.
        schedule: this stage's LR schedule (from step 0).
        activation_checkpointing: recompute block activations in backward.
        compile: ``torch.compile`` each block.
        loss_chunk_size: tokens per chunk of the output layer's loss (its logits never exist whole); 0 or null:
            the whole batch's logits at once.
    """

    def __init__(
        self,
        checkpoint: str,
        lora: LoRAConfig | None = None,
        train_vision: bool = False,
        exact_match_prompts: int = 64,
        max_answer_tokens: int = 8,
        optimizer: OptimizerConfig | None = None,
        schedule: LRSchedule | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        loss_chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(
            checkpoint, checkpoint, "weights_only", optimizer, schedule, activation_checkpointing, compile,
            loss_chunk_size=loss_chunk_size,
        )  # fmt: skip
        self.save_hyperparameters()  # this class's arguments, not JointStage's
        if isinstance(lora, dict):
            lora = LoRAConfig(**lora)  # as a checkpoint stores it (targets a list: the config makes it a tuple)
        if lora is not None and train_vision:
            raise ConfigError("train_vision needs full fine-tuning (lora: null): LoRA adapts the LLM only")
        self.lora = lora
        if lora is not None:
            apply_lora(self.llm, lora)  # freezes the LLM except its adapters
        if not train_vision:
            self.vit.requires_grad_(False)
            self.projector.requires_grad_(False)
        self.exact_match_prompts, self.max_answer_tokens = exact_match_prompts, max_answer_tokens
        self._prompts: list | None = None
        trainable, total = count_trainable(self)
        print(f"SFTStage: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)", flush=True)

    def setup(self, stage: str) -> None:
        self.check_vocab_fits(self.llm.config.vocab_size, "llm")  # no optimizer hand-off: fine-tuning starts afresh

    def on_train_start(self) -> None:
        pass  # JointStage carries optimizer moments; fine-tuning starts with fresh ones

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/chat_loss
        self._report_exact_match()

    def _report_exact_match(self) -> None:
        """Exact match of greedy answers, beside what needs no image: the same questions with another question's
        images, and the best constant answer per question kind (the majority baseline)."""
        datamodule = self.trainer.datamodule
        if self.exact_match_prompts <= 0 or not hasattr(datamodule, "val_conversations"):
            return
        if self._prompts is None:
            self._prompts = datamodule.val_conversations()[: self.exact_match_prompts]
        mine = list(range(self.global_rank, len(self._prompts), self.trainer.world_size))  # disjoint per rank
        swapped = swap_images(self._prompts)
        questions = [(p.prompt_ids, p.images) for p in self._prompts]
        shuffled = [(p.prompt_ids, swapped[i]) for i, p in enumerate(self._prompts)]
        asked = [questions[i] for i in mine] + [shuffled[i] for i in mine]
        answers = answer_prompts(self.vlm, self.data_tokenizer, asked, self.max_answer_tokens)
        references = [self._prompts[i].answer for i in mine]
        hits = torch.tensor([
            sum(is_exact_match(a, r) for a, r in zip(answers[: len(mine)], references)),
            sum(is_exact_match(a, r) for a, r in zip(answers[len(mine) :], references)),
            len(mine),
        ], dtype=torch.float64, device=self.device)  # fmt: skip
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits)
        total = hits[2].clamp(min=1)
        metrics = {
            "val/exact_match": float(hits[0] / total),
            "val/exact_match_swapped_images": float(hits[1] / total),
            "val/exact_match_majority": majority_baseline(self._prompts),
        }
        self.report_validation(metrics, "val/exact_match")
        rows = [(decode_generated(self.data_tokenizer, self._prompts[i].prompt_ids), self._prompts[i].answer,
                 answers[k], answers[len(mine) + k]) for k, i in enumerate(mine[:ANSWER_SAMPLES])]  # fmt: skip
        log_text_table(
            self.trainer, f"{split_name(self.trainer)}/answer_samples", ANSWER_HEADER, rows, self.pipeline_step
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora is not None:  # loaders merge the adapters into the base weights (checkpoint.load_backbone)
            checkpoint["mm_lightning"]["lora"] = {"backbone": "llm", **to_plain(self.lora)}

    def merge_adapters(self) -> None:
        """Fold the adapters into the LLM's weights (in place): a plain model again, whose checkpoints need no LoRA."""
        merge_lora(self.llm)
        self.llm.requires_grad_(True)
        self.lora = None

    def save_adapters(self, path: str | Path) -> Path:
        """Write the LLM's adapters alone (``torch.load(..., weights_only=True)``-able); returns the path."""
        if self.lora is None:
            raise ConfigError("this SFTStage trains without LoRA (lora: null): there are no adapters to save")
        save_adapters(self.llm, self.lora, path)
        return Path(path)


def swap_images(prompts: list) -> list[list]:
    """Each prompt's images replaced by those of the next prompt with as many (cyclically): the answer can then use
    only what the question and the conversation say. Prompts without images keep none."""
    swapped = [list(p.images) for p in prompts]
    by_count: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_count.setdefault(len(prompt.images), []).append(index)
    for count, indices in by_count.items():
        if count:
            for position, index in enumerate(indices):
                swapped[index] = list(prompts[indices[(position + 1) % len(indices)]].images)
    return swapped


def majority_baseline(prompts: list) -> float:
    """The exact-match share of answering every question of a kind (its tag) with that kind's most common answer."""
    kinds: dict[str, Counter] = {}
    for prompt in prompts:
        kinds.setdefault(prompt.tag, Counter())[normalize_answer(prompt.answer)] += 1
    return sum(counts.most_common(1)[0][1] for counts in kinds.values()) / max(1, len(prompts))
