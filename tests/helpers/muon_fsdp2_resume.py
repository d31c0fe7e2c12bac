"""Run by ``tests/parallel/test_muon_fsdp2.py`` in a subprocess: Muon under FSDP2 through Lightning's checkpoints.

``TextPretrainStage`` with ``optimizer.name=muon`` on 2 CPU processes (``ModelParallelStrategy``, gloo) trains 2 steps
and saves a full checkpoint (``save_distributed_checkpoint=False``, as the project's FSDP2 configs do); a second fit
resumes from it for one more step. Each fit writes the whole optimizer state (every DTensor gathered) by parameter
name: ``saved.pt`` when the first ends, ``restored.pt`` when the second starts, right after Lightning restored it.
Usage: ``PYTHONPATH=tests python tests/helpers/muon_fsdp2_resume.py OUT_DIR``.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

MICRO = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 75, "vocab_size": 128}


class WriteOptimizerState(pl.Callback):
    """Writes the optimizer's state, gathered whole and keyed by parameter name, to ``path`` (rank 0)."""

    def __init__(self, path: Path, when: str) -> None:
        self.path, self.when = path, when

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when == "start":
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when == "end":
            self.write(trainer, pl_module)

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        names = {id(param): name for name, param in pl_module.named_parameters()}
        state = {
            names[id(param)]: {key: whole(value) for key, value in optimizer.state[param].items()}
            for group in optimizer.param_groups
            for param in group["params"]
        }
        if trainer.is_global_zero:
            torch.save({"state": state, "global_step": trainer.global_step}, self.path)


def whole(value: object) -> object:
    return value.full_tensor() if isinstance(value, DTensor) else value


def fit(out: Path, max_steps: int, record: WriteOptimizerState, ckpt_path: Path | None = None) -> pl.Trainer:
    pl.seed_everything(0)
    stage = TextPretrainStage(llm="tiny", llm_overrides=MICRO, optimizer=OptimizerConfig(name="muon"),
                              schedule=LRSchedule(peak_lr=1e-2, warmup_steps=1, total_steps=10))  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False),
        default_root_dir=out, callbacks=[record],
    )  # fmt: skip
    data = SyntheticTextDataModule(vocab_size=128, seq_len=16, batch_size=2, num_rows=64, mean_doc_len=8)
    trainer.fit(stage, data, ckpt_path=ckpt_path)
    return trainer


def main() -> None:
    out = Path(sys.argv[1])
    first = fit(out, 2, WriteOptimizerState(out / "saved.pt", "end"))
    first.save_checkpoint(out / "muon.ckpt")
    fit(out, 3, WriteOptimizerState(out / "restored.pt", "start"), ckpt_path=out / "muon.ckpt")


if __name__ == "__main__":
    main()
