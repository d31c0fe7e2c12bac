"""``precision: bf16-auto`` (resolved from mocked CPU flags and CUDA probes) and bf16 autocast training on the CPU."""

from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from helpers.colour_task import COCA, VIT, ColourData
from torch.utils._python_dispatch import TorchDispatchMode

from mm_lightning import precision
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.fit import check_fit_config
from mm_lightning.ops.rope import apply_rope, rope_cos_sin
from mm_lightning.precision import AutoPrecisionTrainer, cpu_flags, native_cpu_bf16, resolve_precision
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage, ViTCoCaStage

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"
SKYLAKE_X = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512dq avx512vl\n"  # oneDNN emulates bf16 here
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 svebf16\n"
GRAVITON2 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
MICRO_LLM = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 256}


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (SKYLAKE_X, None), (GRAVITON3, "bf16"), (GRAVITON2, None)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert native_cpu_bf16(cpu_flags(cpuinfo)) == native


@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_bf16_auto_on_cpus(monkeypatch, accelerator):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen, why = resolve_precision("bf16-auto", accelerator, cpu_flags(ZEN4))
    assert (chosen, why) == ("bf16-mixed", "the CPU computes bf16 natively (avx512_bf16)")
    chosen, why = resolve_precision("bf16-auto", accelerator, cpu_flags(SKYLAKE_X))
    assert chosen == "32-true" and "no native bf16" in why


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda"])
def test_bf16_auto_on_cuda_gpus(monkeypatch, accelerator, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    chosen, why = resolve_precision("bf16-auto", accelerator, cpu_flags(SKYLAKE_X))  # the CPU does not matter
    assert chosen == expected and "GPU" in why


def test_other_devices_and_values(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("bf16-auto", "mps", cpu_flags(ZEN4))[0] == "32-true"
    for value in ("32-true", "bf16-mixed", 16, None):
        assert resolve_precision(value, "cpu", cpu_flags(ZEN4)) == (value, "")


@pytest.mark.parametrize(("native", "expected"), [("amx_bf16", "bf16-mixed"), (None, "32-true")])
def test_the_trainer_resolves_bf16_auto_and_says_why(monkeypatch, native, expected):
    lines = []
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda flags=None: native)
    monkeypatch.setattr(precision, "rank_zero_info", lines.append)
    trainer = AutoPrecisionTrainer(accelerator="cpu", precision="bf16-auto", logger=False, enable_progress_bar=False)
    assert trainer.precision == expected
    assert len(lines) == 1 and lines[0].startswith(f"mm-lightning: precision bf16-auto -> {expected}: ")


def test_the_cli_parses_bf16_auto_and_refuses_other_values(tmp_path):
    config = (
        "trainer: {accelerator: cpu, precision: PRECISION}\n"
        "model: {class_path: mm_lightning.stages.TextPretrainStage, init_args: {llm: tiny}}\n"
        "data: {class_path: mm_lightning.data.synthetic.SyntheticTextDataModule, init_args: {vocab_size: 256}}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(config.replace("PRECISION", "bf16-auto"))
    check_fit_config(path)
    path.write_text(config.replace("PRECISION", "bf16-automatic"))
    with pytest.raises(Exception, match="precision"):
        check_fit_config(path)


def test_rope_keeps_the_dtype_of_q_and_k_under_autocast():
    """Float32 tables (from the float32 residual stream) must not turn bf16 q/k into float32."""
    cos, sin = rope_cos_sin(torch.arange(8)[None], 16, 10_000.0, torch.float32)
    q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
    rotated = apply_rope(q, cos, sin)
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated.float(), apply_rope(q.float(), cos, sin), atol=0.02, rtol=0.02)


class MatmulDtypes(TorchDispatchMode):
    """Counts the matrix products (matmuls and CPU attention kernels) run inside it, by op and input dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, torch.dtype]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm", "linear") or "scaled_dot_product" in name:
            self.counts[name, args[0].dtype] += 1
        return func(*args, **(kwargs or {}))


class RecordMatmuls(pl.Callback):
    """Every training step (forward, backward and optimizer step) under :class:`MatmulDtypes`."""

    def __init__(self) -> None:
        self.mode = MatmulDtypes()

    def on_train_batch_start(self, *args) -> None:
        self.mode.__enter__()

    def on_train_batch_end(self, *args) -> None:
        self.mode.__exit__(None, None, None)


def micro_stage_and_data(which: str) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    schedule = LRSchedule(peak_lr=1e-3, warmup_steps=1, total_steps=4)
    if which == "llm":
        data = SyntheticTextDataModule(vocab_size=256, seq_len=32, batch_size=4, num_rows=32, mean_doc_len=8)
        return TextPretrainStage(llm="tiny", llm_overrides=MICRO_LLM, schedule=schedule), data
    stage = ViTCoCaStage(vit="tiny", vit_overrides=VIT, coca="tiny", coca_overrides=COCA, schedule=schedule)
    return stage, ColourData()


@pytest.mark.parametrize("which", ["llm", "vit_coca"])
def test_bf16_mixed_trains_on_the_cpu_with_bf16_matmuls(tmp_path, one_thread, which):
    """Packed rows (LLM) and packed images (ViT + CoCa): finite losses, every matmul and attention in bf16, and
    gradient clipping with the fused AdamW (which Lightning's mixed-precision plugin would refuse)."""
    pl.seed_everything(0)
    stage, data = micro_stage_and_data(which)
    record = RecordMatmuls()
    trainer = pl.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=2, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=tmp_path, callbacks=[record],
    )  # fmt: skip
    trainer.fit(stage, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    dtypes = {dtype for _, dtype in record.mode.counts}
    assert dtypes == {torch.bfloat16}, record.mode.counts
    assert sum(count for (name, _), count in record.mode.counts.items() if "mm" in name) >= 20
    assert any("scaled_dot_product" in name for name, _ in record.mode.counts)
    assert all(param.dtype == torch.float32 for param in stage.parameters())  # mixed: the weights stay fp32
