"""One-step checkpoints of every stage at the tiny presets, on the demo data: shared by the tests that need a
checkpoint of each kind but not a trained one (the ``tiny_checkpoints`` session fixture, ~10 s once)."""

import shutil
from pathlib import Path

import lightning.pytorch as pl
import yaml

from mm_lightning.data import ImageTextDataModule, MixtureDataModule, TextDataModule
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import AlignStage, JointStage, TextPretrainStage, ViTCoCaStage

SHORT = LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=3)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGES = {"text": TextPretrainStage, "vit": ViTCoCaStage, "align": AlignStage, "joint": JointStage}


def fit_one_step(stage: pl.LightningModule, data: pl.LightningDataModule, path: Path) -> None:
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=path.parent)  # fmt: skip
    trainer.fit(stage, data)
    trainer.save_checkpoint(path)


def image_text(batch_size: int = 4) -> ImageTextDataModule:
    return ImageTextDataModule("demo:emoji-scenes", batch_size=batch_size, max_patches=36)


def mixture() -> MixtureDataModule:
    sources = [{"name": "text", "kind": "text", "path": "demo:sotu"},
               {"name": "scenes", "kind": "image_text", "path": "demo:emoji-scenes"}]  # fmt: skip
    return MixtureDataModule(sources, seq_len=128, samples_per_batch=3, max_patches=36, val_batches=1)


def build_tiny_checkpoints(root: Path, inputs: Path) -> dict[str, Path]:
    """One-step checkpoints of every stage at the presets of ``configs/*/tiny.yaml``, on the demo data (~10 s).

    The alignment and joint stages take their backbones from copies of the earlier checkpoints, deleted afterwards:
    their checkpoints name input files that no longer exist.
    """
    pl.seed_everything(0)
    text = TextPretrainStage(llm="tiny", schedule=SHORT)
    fit_one_step(text, TextDataModule(seq_len=32, batch_size=2), root / "text.ckpt")
    vit_args = yaml.safe_load((CONFIGS / "vit_coca" / "tiny.yaml").read_text())["model"]["init_args"]
    vit = ViTCoCaStage(
        vit=vit_args["vit"], coca=vit_args["coca"], coca_overrides=vit_args.get("coca_overrides"), schedule=SHORT
    )  # the config's backbones: the CLI tests resume it with that config
    fit_one_step(vit, image_text(), root / "vit.ckpt")
    for name in ("text", "vit"):
        shutil.copy(root / f"{name}.ckpt", inputs / f"{name}.ckpt")
    fit_one_step(AlignStage(str(inputs / "text.ckpt"), str(inputs / "vit.ckpt"), schedule=SHORT), image_text(),
                 root / "align.ckpt")  # fmt: skip
    shutil.copy(root / "align.ckpt", inputs / "align.ckpt")
    joint = JointStage(str(inputs / "text.ckpt"), str(inputs / "align.ckpt"), handoff="weights_only", schedule=SHORT)
    fit_one_step(joint, mixture(), root / "joint.ckpt")
    shutil.rmtree(inputs)
    return {name: root / f"{name}.ckpt" for name in STAGES}
