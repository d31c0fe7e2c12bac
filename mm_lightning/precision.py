"""Training precision: ``bf16-auto`` (bf16 autocast where the device computes bf16 natively, else fp32) and
gradient clipping under bf16 autocast.

``trainer.precision: bf16-auto`` is this project's value, resolved before the Trainer is built
(:func:`resolve_precision`): ``bf16-mixed`` on a CUDA GPU with bf16 (``torch.cuda.is_bf16_supported()``) and on a
CPU with native bf16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension), ``32-true`` elsewhere:
oneDNN runs bf16 on any AVX-512 CPU, but without those instructions it converts in software and is slower than
fp32. One line says what was chosen and why. Every other value passes through to Lightning unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union, get_type_hints

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info

AUTO = "bf16-auto"
NATIVE_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX512-BF16, aarch64 FEAT_BF16
# Lightning's precision values (its Trainer's annotation: the parser checks them) and ours
LIGHTNING_PRECISION = get_type_hints(pl.Trainer.__init__)["precision"]
PrecisionInput = Union[LIGHTNING_PRECISION, Literal["bf16-auto"]]  # noqa: UP007 (a runtime value: jsonargparse reads it)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_cpu_bf16(flags: set[str] | None = None) -> str | None:
    """The CPU's native bf16 instruction set (``amx_bf16``, ``avx512_bf16`` or ``bf16``), or None.

    Without ``/proc/cpuinfo`` (not Linux), PyTorch's own x86 probes answer.
    """
    flags = cpu_flags() if flags is None else flags
    if not flags:
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return "avx512_bf16" if probe is not None and probe() else None
    return next((flag for flag in NATIVE_CPU_BF16_FLAGS if flag in flags), None)


def device_kind(accelerator: Any) -> str:
    """``cuda``, ``cpu``, ``mps`` or another name: where a Trainer with ``accelerator`` (a name or an instance) runs."""
    name = accelerator.lower() if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    name = name.removesuffix("accelerator") or "auto"
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu" if name == "auto" else name
    return name


def resolve_precision(precision: Any, accelerator: Any = "auto", flags: set[str] | None = None) -> tuple[Any, str]:
    """``(precision for Lightning, why)``: ``bf16-auto`` resolved for the device; any other value unchanged.

    Args:
        precision: ``trainer.precision`` as configured.
        accelerator: ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``, ...).
        flags: CPU feature flags (default: this machine's; tests pass their own).

    Returns:
        The precision to build the Trainer with and a one-line reason ("" when nothing was resolved).
    """
    if precision != AUTO:
        return precision, ""
    device = device_kind(accelerator)
    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"the GPU ({torch.cuda.get_device_name()}) supports bf16"
        return "32-true", "the GPU has no bf16 support"
    if device != "cpu":
        return "32-true", f"{AUTO} picks bf16 on CUDA GPUs and CPUs only, and this run is on {device}"
    flag = native_cpu_bf16(flags)
    if flag:
        return "bf16-mixed", f"the CPU computes bf16 natively ({flag})"
    return "32-true", "the CPU has no native bf16 (avx512_bf16, amx_bf16 or Arm bf16): it would convert in software"


class AutoPrecisionTrainer(pl.Trainer):
    """Lightning's ``Trainer`` that also takes ``precision: bf16-auto`` (the CLI's trainer class)."""

    def __init__(self, *, precision: PrecisionInput = None, **kwargs: Any) -> None:
        """Resolve ``precision`` (:func:`resolve_precision`), saying in one line what was chosen and why.

        Args:
            precision: as Lightning's, or ``bf16-auto``: ``bf16-mixed`` where the device computes bf16 natively (a
                CUDA GPU with bf16, a CPU with AVX512-BF16, AMX-BF16 or Arm BF16), ``32-true`` elsewhere.
            kwargs: Lightning's ``Trainer`` arguments.
        """
        resolved, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        if why:
            rank_zero_info(f"mm-lightning: precision {AUTO} -> {resolved}: {why}")
        super().__init__(precision=resolved, **kwargs)


def clip_gradients(module: Any, optimizer: Any, clip_val: float | None, algorithm: Any) -> bool:
    """Clip as in full precision under bf16 autocast; False (nothing done) otherwise.

    Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales gradients itself (a fused
    AdamW), a concern of fp16's grad scaler only: bf16 autocast scales nothing, so the plain clipping applies.
    """
    plugin = module.trainer.precision_plugin
    if not clip_val or not isinstance(plugin, MixedPrecision) or plugin.scaler is not None:
        return False
    Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
    return True
