"""Checkpoints whose moments the ``continue`` hand-off must match by name (``tests/parallel/test_handoff_order.py``).

``fit`` trains ``TextPretrainStage``'s micro LLM a few steps with AdamW or Muon, on one device (the test's own process)
or on 2 CPU processes under FSDP2 (``ModelParallelStrategy`` with ``save_distributed_checkpoint=False``, as the
project's FSDP2 configs save; run as this script, which Lightning launches once per rank). Each fit writes the moments
by parameter name as training ends (``<name>_moments.pt``), then a full checkpoint (``<name>.ckpt``).
Usage: ``PYTHONPATH=tests python tests/helpers/handoff_fsdp2.py OUT_DIR`` (AdamW, then Muon, under FSDP2).
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import ModelParallelStrategy

from helpers.muon_fsdp2_resume import MICRO, WriteOptimizerState
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.optim import OptimizerConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

OPTIMIZERS = ("adamw", "muon")
STEPS = 3


def micro_stage(optimizer: str) -> TextPretrainStage:
    return TextPretrainStage(llm="tiny", llm_overrides=MICRO, optimizer=OptimizerConfig(name=optimizer),
                             schedule=LRSchedule(peak_lr=1e-2, warmup_steps=1, total_steps=10))  # fmt: skip


def fit(out: Path, optimizer: str, devices: int) -> str:
    """Train ``STEPS`` steps on ``devices`` CPU processes (FSDP2 on 2); the name its files start with."""
    pl.seed_everything(0)
    name = f"{optimizer}_{'fsdp2' if devices > 1 else 'single'}"
    strategy = "auto"
    if devices > 1:
        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=out, callbacks=[WriteOptimizerState(out / f"{name}_moments.pt", "end")],
    )  # fmt: skip
    data = SyntheticTextDataModule(vocab_size=128, seq_len=16, batch_size=2, num_rows=64, mean_doc_len=8)
    trainer.fit(micro_stage(optimizer), data)
    trainer.save_checkpoint(out / f"{name}.ckpt")
    return name


def main() -> None:
    for optimizer in OPTIMIZERS:
        fit(Path(sys.argv[1]), optimizer, devices=2)


if __name__ == "__main__":
    main()
