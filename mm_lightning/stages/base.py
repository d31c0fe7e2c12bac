"""What every stage shares: optimizer, the global-step LR schedule, parallelism and checkpoint metadata.

A concrete stage only says which backbones it builds (``backbones()``), what trains, and its steps.
Backbone attribute names are registry kinds (``self.llm`` is an ``llm``), so the checkpoint can record
each one's resolved config and a later stage can rebuild it with ``checkpoint.load_backbone``. A stage with a
ViT also records how its images were cut into patches (its datamodule's ``patch_size`` and ``max_patches``, or
what the checkpoint its ViT came from recorded), so ``generate`` and the evaluations feed the same grids.

Lightning's conventions hold for every stage: ``Stage.load_from_checkpoint(path)`` needs no Trainer and no other
checkpoint (:meth:`StageModule.load_from_checkpoint`); ``test`` runs the validation logic on the datamodule's test
loaders and logs ``test/...``; ``predict_step`` returns JSON-ready records that
:class:`~mm_lightning.callbacks.PredictionWriter` writes.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from contextvars import ContextVar
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from mm_lightning.checkpoint import (
    META_KEY,
    checkpoint_meta,
    load_backbone,
    load_checkpoint,
    recorded_image_preprocessing,
    to_plain,
)
from mm_lightning.errors import ConfigError, DataError
from mm_lightning.handoff import optimizer_param_names, optimizer_state_names
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.registry import build_from_config, config_from_dict
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import parallelize
from mm_lightning.precision import clip_gradients
from mm_lightning.schedules import (
    LRSchedule,
    build_lr_scheduler,
    check_table,
    fit_table_to_stage,
    fit_to_stage,
    shortened_warmup,
    stage_end_mismatch,
)

TOKEN_ID_KEYS = ("input_ids", "caption_ids")
"""The batch keys holding token ids that index the model's embedding."""
# Lightning warns whenever a module implements this hook and a datamodule is passed, as every stage does by design
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule` but")
_LOADING: ContextVar[dict[str, Any] | None] = ContextVar("mm_lightning_loading", default=None)
"""The metadata block of the checkpoint :meth:`StageModule.load_from_checkpoint` is building a stage from."""
Config = TypeVar("Config")


def from_plain(cls: type[Config], value: Config | dict[str, Any] | None) -> Config | None:
    """A dataclass config back from its :func:`~mm_lightning.checkpoint.to_plain` form (lists become tuples), as
    ``load_from_checkpoint`` passes a stage the hyper-parameters its checkpoint stored; other values as they are."""
    if isinstance(value, dict):
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in value.items()})
    return value


class StageModule(pl.LightningModule):
    """Base class of all stage modules.

    Args:
        optimizer: optimizer choice and hyper-parameters (or their plain-data form, as a checkpoint stores them).
        schedule: the LR schedule piece this stage runs (a pure function of the global step); plain data too.
        global_step_offset: pipeline-global step at which this stage starts (0 for the first stage).
        activation_checkpointing: recompute block activations in backward to save memory.
        compile: ``torch.compile`` each transformer block.
    """

    def __init__(
        self,
        optimizer: OptimizerConfig | dict[str, Any] | None = None,
        schedule: LRSchedule | dict[str, Any] | None = None,
        global_step_offset: int = 0,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_config = from_plain(OptimizerConfig, optimizer) or OptimizerConfig()
        self.schedule = from_plain(LRSchedule, schedule) or LRSchedule()
        self.schedule_table: list[LRSchedule] = [self.schedule]  # callbacks may continue or extend it
        self.global_step_offset = global_step_offset
        self.activation_checkpointing = activation_checkpointing
        self.compile_blocks = compile
        self.tokens_seen = 0
        self.flops_per_batch = 0.0  # read by Lightning's ThroughputMonitor for MFU
        self.inherited_image_preprocessing: ImagePreprocessing | None = None  # set by stages that load a ViT
        self.model_vocab_size: int | None = None  # set by check_vocab_fits; every batch's token ids must be below
        self._parallelized = False

    def backbones(self) -> dict[str, nn.Module]:
        """The stage's backbones by registry kind, e.g. ``{"llm": self.llm}``."""
        raise NotImplementedError

    @property
    def pipeline_step(self) -> int:
        """Global step along the pipeline: where this stage started plus the steps it has taken."""
        return self.global_step_offset + self.global_step

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, needing no Trainer and no other checkpoint.

        A stage that takes its backbones from other checkpoints (``AlignStage``, ``JointStage``) builds them here
        from the configs this checkpoint recorded (:meth:`inherit_backbone`), so those files need not exist any more;
        the weights are this checkpoint's ``state_dict``. The optimizer and schedule become dataclasses again.
        """
        meta = None
        if isinstance(checkpoint_path, str | os.PathLike):
            meta = checkpoint_meta(load_checkpoint(checkpoint_path), checkpoint_path)
        token = _LOADING.set(meta)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _LOADING.reset(token)

    def inherit_backbone(self, path: str, kind: str) -> nn.Module:
        """The ``kind`` backbone of the stage checkpoint ``path`` (:func:`~mm_lightning.checkpoint.load_backbone`).

        Inside :meth:`load_from_checkpoint` it is built from the config the loaded checkpoint recorded (the one its
        weights fit, e.g. a RoPE base switched during the stage) and ``path`` is not read.
        """
        recorded = (_LOADING.get() or {}).get("backbones", {})
        if kind not in recorded:
            return load_backbone(path, kind)
        return build_from_config(kind, config_from_dict(kind, recorded[kind]))

    def inherit_image_preprocessing(self, path: str) -> None:
        """Take the image preprocessing ``path`` recorded (inside :meth:`load_from_checkpoint`: the loaded one's)."""
        self.inherited_image_preprocessing = recorded_image_preprocessing(_LOADING.get() or path)

    @property
    def data_tokenizer(self) -> Any:
        """The datamodule's tokenizer; ``None`` without a Trainer, a datamodule or a tokenizer."""
        return getattr(getattr(self._trainer, "datamodule", None), "tokenizer", None)

    def configure_model(self) -> None:
        if self._parallelized or self._trainer is None:  # no Trainer (load_from_checkpoint): a plain module
            return
        mesh = None
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            mesh = self.device_mesh["data_parallel"]
        for module in self.backbones().values():  # every backbone: an unsharded one would skip gradient sync
            blocks = getattr(module, "blocks", nn.ModuleList())  # a projector is one unit, no blocks
            parallelize(module, blocks, mesh, self.activation_checkpointing, self.compile_blocks)
        self._parallelized = True

    def configure_optimizers(self) -> dict[str, Any]:
        self.fit_schedule_to_stage()
        table = check_table(self.schedule_table)
        optimizer = build_optimizer(self, self.optimizer_config, lr=table[0].peak_lr)
        scheduler = build_lr_scheduler(optimizer, table, step_offset=self.global_step_offset)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Lightning's clipping, also for a fused AdamW under bf16 autocast (:func:`.precision.clip_gradients`)."""
        if not clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def fit_schedule_to_stage(self) -> None:
        """Give the schedule pieces without ``total_steps`` the stage's length (``trainer.max_steps``), warning in one
        line when this stage's own piece has a ``total_steps`` set by hand that ends elsewhere or a warmup that had to
        be shortened. A table that ``LRSchedulerResume`` brought from an earlier stage keeps that stage's lengths."""
        steps = self.trainer.max_steps if self._trainer is not None else -1
        if any(piece is self.schedule for piece in self.schedule_table):  # its own piece, not a resumed table
            fitted = fit_to_stage(self.schedule, self.global_step_offset, steps)
            for line in (stage_end_mismatch(self.schedule, self.global_step_offset, steps),
                         shortened_warmup(self.schedule, fitted)):  # fmt: skip
                if line:
                    rank_zero_warn(line)
            self.schedule_table = [fitted if piece is self.schedule else piece for piece in self.schedule_table]
            self.schedule = fitted
        self.schedule_table = fit_table_to_stage(self.schedule_table, self.global_step_offset, steps)

    def count_tokens(self, tokens_in_local_batch: int) -> None:
        """Add one optimizer step's tokens (all ranks) to ``tokens_seen`` and log it with the LR."""
        self.tokens_seen += tokens_in_local_batch * self.trainer.world_size
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else 0.0
        self.log_dict(
            {
                "train/tokens_seen": float(self.tokens_seen),
                "train/lr": lr,
                "train/global_step": float(self.pipeline_step),
                "step": float(self.pipeline_step),  # Lightning's x-axis key: stages line up on the global step
            },
            on_step=True,
            on_epoch=False,
        )

    def check_vocab_fits(self, model_vocab_size: int, overrides_field: str) -> None:
        """Fail clearly when the datamodule's tokenizer has more tokens than the model's vocabulary (and, from then
        on, when a batch holds a token id outside it: :meth:`on_before_batch_transfer`)."""
        self.model_vocab_size = model_vocab_size
        data_vocab_size = getattr(self.trainer.datamodule, "vocab_size", None) if self._trainer else None
        if data_vocab_size is not None and data_vocab_size > model_vocab_size:
            raise ConfigError(
                f"The data's tokenizer has {data_vocab_size} tokens but the model's vocab_size is {model_vocab_size}; "
                f"set model.init_args.{overrides_field}.vocab_size >= {data_vocab_size}."
            )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Refuse a batch whose token ids the model has no embedding for, while it is on the CPU (no device sync)."""
        if self.model_vocab_size is not None and isinstance(batch, dict):
            for key in TOKEN_ID_KEYS:
                ids = batch.get(key)
                if isinstance(ids, torch.Tensor) and ids.numel():
                    low, high = torch.aminmax(ids)
                    if low < 0 or high >= self.model_vocab_size:
                        self._refuse_token_id(int(low if low < 0 else high))
        return batch

    def _refuse_token_id(self, token_id: int) -> None:
        datamodule = self.trainer.datamodule if self._trainer else None
        specs = getattr(datamodule, "specs", None) or []  # a mixture's sources
        where = getattr(datamodule, "data_path", None) or ", ".join(str(spec.path) for spec in specs) or "the data"
        raise DataError(
            f"token id {token_id} in a batch of {where} is outside the model's vocabulary (vocab_size "
            f"{self.model_vocab_size}): the data is corrupt or was tokenized with another tokenizer; prepare it again "
            "with this run's tokenizer (mm-lightning prepare ... --tokenizer TOKENIZER.json --overwrite)"
        )

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The plain-data block a later stage reads: step, schedule, backbone configs, RoPE base, tokens."""
        backbones = self.backbones()
        meta: dict[str, Any] = {
            "stage": type(self).__name__,
            "global_step": self.pipeline_step,
            "schedule": dataclasses.asdict(self.schedule),
            "schedule_table": [dataclasses.asdict(piece) for piece in self.schedule_table],
            "global_step_offset": self.global_step_offset,
            "backbones": {kind: dataclasses.asdict(module.config) for kind, module in backbones.items()},
            "prefixes": {kind: self._state_dict_prefix(module) for kind, module in backbones.items()},
            "tokens_seen": self.tokens_seen,
        }
        if "llm" in backbones:
            meta["rope_base"] = backbones["llm"].rope_base
        preprocessing = self.image_preprocessing() if "vit" in backbones else None
        if preprocessing is not None:
            meta["image_preprocessing"] = dataclasses.asdict(preprocessing)
        tokenizer = self.data_tokenizer
        if tokenizer is not None:  # the checkpoint names its own vocabulary: generate and the API need no guess
            meta["tokenizer"] = tokenizer.to_str()
        return meta

    def image_preprocessing(self) -> ImagePreprocessing | None:
        """How this stage cuts images into patches, or ``None`` when nothing says.

        Its datamodule's ``patch_size`` and ``max_patches`` when it has both (``ImageTextDataModule``,
        ``MixtureDataModule``), else what the checkpoint its ViT came from recorded.
        """
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "patch_size") and hasattr(datamodule, "max_patches"):
            return ImagePreprocessing(int(datamodule.patch_size), int(datamodule.max_patches))
        return self.inherited_image_preprocessing

    def _state_dict_prefix(self, module: nn.Module) -> str:
        return next(f"{name}." for name, candidate in self.named_modules() if candidate is module)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.checkpoint_metadata()
        if self._trainer is not None and self.trainer.optimizers:  # so a later stage can match moments by name
            optimizer, meta = self.trainer.optimizers[0], checkpoint[META_KEY]
            meta["optimizer_param_names"] = optimizer_param_names(self, optimizer)
            meta["optimizer_state_names"] = optimizer_state_names(self, optimizer, self.trainer.strategy)
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A full resume of this stage: the tokens count, and the schedule table and offset it ran with."""
        meta = checkpoint.get(META_KEY, {})
        self.tokens_seen = int(meta.get("tokens_seen", 0))
        if "schedule_table" in meta:
            self.schedule_table = [LRSchedule(**piece) for piece in meta["schedule_table"]]
            self.global_step_offset = int(meta["global_step_offset"])

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """The validation step on the test loaders (the datamodules' held-out split)."""
        return self.validation_step(batch, batch_idx, **({"dataloader_idx": dataloader_idx} if dataloader_idx else {}))

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()  # its metrics are logged as test/... (report_validation)

    def report_validation(self, metrics: dict[str, float], headline: str) -> None:
        """Log validation metrics (``headline`` on the progress bar) and print them on one line.

        With ``num_sanity_val_steps: -1`` the sanity check is a full validation of the starting weights;
        Lightning does not log it, so it goes straight to the logger at the current step: every validation
        curve then starts from its untrained (or inherited) value. In ``test`` the ``val/`` names become ``test/``.
        """
        if self.trainer.testing:
            metrics = {f"test/{name.removeprefix('val/')}": value for name, value in metrics.items()}
            headline = f"test/{headline.removeprefix('val/')}"
        step = float(self.pipeline_step)
        self.log_dict({k: v for k, v in metrics.items() if k != headline} | {"step": step}, rank_zero_only=True)
        self.log(headline, metrics[headline], prog_bar=True, rank_zero_only=True)
        if self.trainer.sanity_checking and self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(metrics, step=self.pipeline_step)
        when = "before training" if self.trainer.sanity_checking else "step"
        self.print(f"{when} {self.pipeline_step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def log_losses(self, losses: dict[str, torch.Tensor], split: str, **kwargs: Any) -> None:
        """Log every named loss term as ``<split>/<name>``; the progress bar shows the total only."""
        terms = {f"{split}/{name}": value.detach() for name, value in losses.items() if name != "loss"}
        self.log_dict(terms, **kwargs)
        self.log(f"{split}/loss", losses["loss"].detach(), prog_bar=True, **kwargs)
