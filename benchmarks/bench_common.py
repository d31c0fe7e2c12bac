"""Helpers the benchmark scripts share: the machine's matmul peak, memory readings, step timing, and the demo
pipeline's stages and datamodules built from their real configs.

The scripts run as ``python benchmarks/<script>.py``, so this module is importable by its bare name
(``from bench_common import ...``): Python puts the script's folder first on ``sys.path``.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import platform
import resource
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from mm_lightning.data.mixture.plan import ShareSchedule
from mm_lightning.models.registry import build_backbone

ROOT = Path(__file__).resolve().parent.parent
DEMO_PIPELINE = ROOT / "configs" / "pipelines" / "demo.yaml"


# -- the machine ---------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a result needs to be read by: CPU, cores, torch threads and version, the GPU when used."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": pl.__version__,
            "device": device}  # fmt: skip
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_gflops(sizes: Iterable[int], repeats: int, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> dict[int, float]:  # fmt: skip
    """Best-of-``repeats`` GFLOP/s of an ``n x n @ n x n`` matmul for each ``n``: the device's practical peak."""
    results = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
        results[n] = 2 * n**3 / best / 1e9
    return results


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def resident_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """This process's peak resident set size so far (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> int:
    """The memory the kernel reports available (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows under headers, each column as wide as its widest cell."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


# -- training steps --------------------------------------------------------------------------------------------------


class StepTimer(pl.Callback):
    """Records the wall clock at the end of every training batch (after the optimizer step)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def fit_step_times(stage: pl.LightningModule, batches: Sequence[Any], warmup: int = 1,
                   accelerator: str = "cpu", precision: str = "32-true") -> list[float]:  # fmt: skip
    """Train ``stage`` under a real Lightning ``Trainer`` on ``batches`` (one step each); the step times after
    ``warmup`` steps, each from one ``on_train_batch_end`` to the next (loading, forward, loss, backward, step)."""
    if not 1 <= warmup < len(batches):
        raise ValueError(f"warmup={warmup} must be at least 1 and leave steps to measure of {len(batches)}")
    timer = StepTimer()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no GPU/TPU lines and tips per fit
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=len(batches),
                         callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    loader = torch.utils.data.DataLoader(list(batches), batch_size=None, collate_fn=_keep)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|val_dataloader).*")
        trainer.fit(stage, train_dataloaders=loader)
    ends = timer.ends[warmup - 1 :]
    return [end - start for start, end in zip(ends, ends[1:])]


def _keep(batch: Any) -> Any:
    return batch


class _PresetBackbones:
    """Mixin: a stage's inherited backbones are registry presets named where a checkpoint path would be."""

    def inherit_backbone(self, path: str, kind: str) -> torch.nn.Module:
        return build_backbone(kind, path)

    def inherit_image_preprocessing(self, path: str) -> None:
        return None


def preset_stage(stage_class: type[pl.LightningModule]) -> Callable[..., pl.LightningModule]:
    """``stage_class`` whose checkpoint arguments name registry presets (``JointStage("tiny", "tiny")``): the real
    stage, randomly initialised, with no checkpoint to read (its speed does not depend on the weights)."""
    return type(f"Preset{stage_class.__name__}", (_PresetBackbones, stage_class), {})


# -- the demo pipeline's stages --------------------------------------------------------------------------------------


def merge(base: dict, overlay: dict) -> dict:
    """``overlay`` merged into a copy of ``base``: mappings key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        both = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = merge(merged[key], value) if both else value
    return merged


def demo_stages(pipeline: Path = DEMO_PIPELINE) -> dict[str, dict]:
    """Each stage of the demo pipeline by name: its stage configs merged in order, ``trainer.max_steps`` from the
    pipeline's overrides."""
    spec = yaml.safe_load(pipeline.read_text())
    stages = {}
    for stage in spec["stages"]:
        paths = stage["config"] if isinstance(stage["config"], list) else [stage["config"]]
        config: dict = {}
        for path in paths:
            config = merge(config, yaml.safe_load((ROOT / path).read_text()))
        steps = stage.get("overrides", {}).get("trainer.max_steps", config["trainer"].get("max_steps"))
        config["trainer"]["max_steps"] = steps
        stages[stage["name"]] = config
    return stages


def build_datamodule(config: dict, **overrides: Any) -> pl.LightningDataModule:
    """A stage config's datamodule, with the data changes its callbacks make at setup: ``RoPEBaseSwitch``'s
    ``seq_len`` and ``ProgressiveMixing``'s share ramp over the stage's ``max_steps``."""
    module, _, name = config["data"]["class_path"].rpartition(".")
    data = getattr(importlib.import_module(module), name)(**(config["data"]["init_args"] | overrides))
    for callback in config["trainer"].get("callbacks", []):
        kind, args = callback["class_path"].rpartition(".")[2], callback.get("init_args", {})
        if kind == "RoPEBaseSwitch" and args.get("seq_len"):
            data.set_seq_len(args["seq_len"])
        elif kind == "ProgressiveMixing":
            ramp = args.get("ramp_samples") or config["trainer"]["max_steps"] * data.samples_per_batch
            data.set_share_schedule(ShareSchedule(args.get("start", 0.0), args.get("end", 0.4), ramp,
                                                  args.get("shape", "linear"), args.get("steps", 4)))  # fmt: skip
    return data


def build_stage(config: dict, preset: str = "tiny", **overrides: Any) -> pl.LightningModule:
    """A stage config's stage module, every checkpoint it would inherit backbones from replaced by registry
    ``preset`` (:func:`preset_stage`) and ``handoff: weights_only`` (no optimizer moments to carry)."""
    module, _, name = config["model"]["class_path"].rpartition(".")
    stage_class = getattr(importlib.import_module(module), name)
    args = dict(config["model"].get("init_args", {}))
    inherits = [key for key in args if key.endswith("checkpoint")]
    for key in inherits:
        args[key] = preset
    if "handoff" in args or "vision_checkpoint" in args:
        args["handoff"] = "weights_only"
    return (preset_stage(stage_class) if inherits else stage_class)(**(args | overrides))
