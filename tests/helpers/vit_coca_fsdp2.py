"""Run by ``tests/parallel/test_vit_coca_fsdp2.py`` in a subprocess: ``ViTCoCaStage`` under FSDP2 on 2 CPU processes.

The colour task's micro ViT and CoCa heads train 2 steps with ``ModelParallelStrategy`` (gloo), then save a full
checkpoint (``save_distributed_checkpoint=False``, as ``configs/vit_coca/so400m_fsdp2.yaml`` does). Rank 0 writes
``result.pt``: the logit scale and bias before and after training (gathered whole), whether they were sharded, and the
last training loss. Usage: ``PYTHONPATH=tests python tests/helpers/vit_coca_fsdp2.py OUT_DIR``.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from helpers.colour_task import COCA, VIT, ColourData
from helpers.muon_fsdp2_resume import whole
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import ViTCoCaStage

SCALARS = ("logit_scale", "logit_bias")


def main() -> None:
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    stage = ViTCoCaStage(vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA,
                         schedule=LRSchedule(peak_lr=1e-2, warmup_steps=1, total_steps=2))  # fmt: skip
    initial = {name: stage.coca.get_parameter(name).detach().clone() for name in SCALARS}
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False),
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(stage, ColourData())
    params = {name: stage.coca.get_parameter(name) for name in SCALARS}
    result = {
        "initial": initial,
        "trained": {name: whole(param).detach() for name, param in params.items()},
        "sharded": all(isinstance(param, DTensor) for param in params.values()),
        "loss": float(trainer.callback_metrics["train/loss"]),
    }
    trainer.save_checkpoint(out / "vit_coca.ckpt")
    if trainer.is_global_zero:
        torch.save(result, out / "result.pt")


if __name__ == "__main__":
    main()
