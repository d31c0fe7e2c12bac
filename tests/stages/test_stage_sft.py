"""The SFT stage: LoRA trains the adapters only, the answer loss falls, exact match is logged beside its no-image
baselines, and every loader sees the fine-tuned (merged) weights."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from mm_lightning.checkpoint import load_backbone, load_checkpoint
from mm_lightning.data import ChatDataModule
from mm_lightning.models.lora import LoRAConfig
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import SFTStage
from mm_lightning.stages.sft import majority_baseline, swap_images


class History(pl.Callback):
    def __init__(self) -> None:
        self.validations: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


@pytest.mark.slow
def test_lora_fine_tuning_lowers_the_answer_loss_and_loaders_see_the_merged_weights(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    pl.seed_everything(0)
    stage = SFTStage(str(tiny_checkpoints["joint"]), lora=LoRAConfig(rank=4, alpha=8.0), exact_match_prompts=8,
                     schedule=LRSchedule(peak_lr=3e-3, warmup_steps=2, total_steps=20, decay_steps=4))  # fmt: skip
    trainable = {name for name, p in stage.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    frozen = {name: p.detach().clone() for name, p in stage.named_parameters() if not p.requires_grad}
    data = ChatDataModule("demo:emoji-chat", batch_size=8, seq_len=128, max_patches=36, val_batches=2)
    history = History()
    trainer = pl.Trainer(accelerator="cpu", max_steps=20, val_check_interval=20, num_sanity_val_steps=-1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[history], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(stage, data)

    before, after = history.validations[0], history.validations[-1]
    assert after["val/chat_loss"] < before["val/chat_loss"] - 0.5, (before, after)
    for name in ("val/exact_match", "val/exact_match_swapped_images", "val/exact_match_majority"):
        assert 0.0 <= after[name] <= 1.0
    for name, value in stage.named_parameters():  # nothing but the adapters moved
        if name in frozen:
            assert torch.equal(value, frozen[name]), name

    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    assert load_checkpoint(tmp_path / "sft.ckpt")["mm_lightning"]["lora"]["rank"] == 4
    merged = load_backbone(tmp_path / "sft.ckpt", "llm").eval()
    stage.eval()
    ids = torch.randint(5, 8192, (2, 24))
    with torch.no_grad():
        # float32 rounding of W + BA against Wx + B(Ax) reaches ~2e-5 on a few of 393,216 logits; a wrong merge
        # (no alpha / rank scale, adapters left out) moves them by the trained adapters' effect, orders more
        torch.testing.assert_close(merged(input_ids=ids), stage.llm(input_ids=ids), atol=1e-4, rtol=1e-4)
    reloaded = SFTStage.load_from_checkpoint(tmp_path / "sft.ckpt")
    for name, value in stage.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(reloaded.state_dict()[name], value), name
    size = stage.save_adapters(tmp_path / "adapters.pt").stat().st_size
    assert size < 0.1 * (tmp_path / "sft.ckpt").stat().st_size


def test_the_no_image_baselines() -> None:
    class Prompt:
        def __init__(self, tag: str, answer: str, images: list) -> None:
            self.tag, self.answer, self.images = tag, answer, images

    prompts = [Prompt("colour", "blue", ["a"]), Prompt("colour", "Blue.", ["b"]), Prompt("colour", "red", ["c"]),
               Prompt("count", "two", []), Prompt("count", "one", ["d", "e"])]  # fmt: skip
    assert majority_baseline(prompts) == pytest.approx(3 / 5)  # "blue" for two of three colours, one of two counts
    assert swap_images(prompts) == [["b"], ["c"], ["a"], [], ["d", "e"]]  # the only two-image prompt keeps its own
