"""The pipeline's manifest: ``<run_dir>/manifest.json``, one entry per stage, kept by global rank zero.

Each entry holds the stage's composed config and Lightning's fully resolved one, its final checkpoint, the
global-step range, tokens seen, wall time summed over attempts, its status, and its validation figures
before training and at the end (read back from its TensorBoard logs). The pipeline decides from it what
to skip on a rerun; the report is drawn from it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mm_lightning.errors import ConfigError
from mm_lightning.pipeline.logs import first_and_last, read_scalars
from mm_lightning.pipeline.spec import StagePaths, StageSpec, get_at

if TYPE_CHECKING:
    from mm_lightning.pipeline.spec import PipelineSpec

MANIFEST_VERSION = 1


def is_rank_zero() -> bool:
    """Whether this process is global rank zero of a ``torchrun`` or SLURM launch (or not launched at all)."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


class Manifest:
    """The manifest of one pipeline run folder; every change is written through at once (rank zero only)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load_or_create(cls, spec: PipelineSpec) -> Manifest:
        """The run folder's manifest, or a new one listing the pipeline's stages as pending."""
        path = spec.run_dir / "manifest.json"
        data: dict[str, Any] = {"version": MANIFEST_VERSION, "pipeline": spec.name, "stages": []}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"{path} is not valid JSON ({error}); move the run folder away, or pass another --run-dir."
                ) from None
        data.update(pipeline=spec.name, pipeline_file=str(spec.path), run_dir=str(spec.run_dir))
        known = {entry["name"]: entry for entry in data.get("stages", [])}
        data["stages"] = [  # the pipeline's order; entries of stages no longer in the file are dropped
            known.get(stage.name, {"name": stage.name, "status": "pending"})
            | {"index": index, "title": stage.title, "bars": dict(stage.bars)}
            for index, stage in enumerate(spec.stages, start=1)
        ]
        return cls(path, data)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The entry of stage ``name`` if it has ever started, else ``None``."""
        entry = next((entry for entry in self.data["stages"] if entry["name"] == name), None)
        return entry if entry and entry.get("status") != "pending" else None

    def _entry(self, name: str) -> dict[str, Any]:
        return next(entry for entry in self.data["stages"] if entry["name"] == name)

    def is_finished(self, name: str) -> bool:
        entry = self.stage(name)
        return bool(entry and entry.get("status") == "finished")

    def run_id(self, name: str) -> str | None:
        """The id of stage ``name``'s current run, new at every fresh start (kept when it resumes)."""
        entry = self.stage(name)
        return entry.get("run_id") if entry else None

    def start_stage(self, stage: StageSpec, digest: str, paths: StagePaths, fresh: bool) -> None:
        """Mark a stage running (attempt n+1, or 1 with a new run id when ``fresh``) and record what it consumes."""
        entry = self._entry(stage.name)
        if fresh:  # starting over: nothing of an earlier attempt (time, figures) belongs to this run
            kept = {key: entry[key] for key in ("name", "index", "title", "bars") if key in entry}
            entry.clear()
            entry.update(kept, run_id=uuid.uuid4().hex[:12])
        entry.update(
            consumed={name: self.run_id(name) for name in stage.needs},
            status="running",
            attempts=int(entry.get("attempts", 0)) + 1,
            digest=digest,
            config_files=[str(path) for path in stage.configs],
            overrides=stage.overrides,
            inputs=stage.inputs,
            config=str(paths.config),
            resolved_config=str(paths.logs / "config.yaml"),
            log_dir=str(paths.logs),
            checkpoint_dir=str(paths.checkpoints),
        )
        entry.setdefault("wall_time_s", 0.0)
        self.save()

    def add_wall_time(self, name: str, seconds: float) -> None:
        entry = self._entry(name)
        entry["wall_time_s"] = round(float(entry.get("wall_time_s", 0.0)) + seconds, 1)
        self.save()

    def add_pipeline_time(self, seconds: float) -> None:
        """Add one ``mm-lightning pipeline`` command's time running stages (stages side by side overlap, so the
        stages' own wall times add up to more)."""
        self.data["wall_time_s"] = round(float(self.data.get("wall_time_s", 0.0)) + seconds, 1)
        self.save()

    def stop_stage(self, name: str, problem: str) -> None:
        self._entry(name).update(status="stopped", problem=problem)
        self.save()

    def finish_stage(self, name: str, fields: dict[str, Any]) -> None:
        entry = self._entry(name)
        entry.pop("problem", None)
        entry.update(fields, status="finished", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.save()

    def save(self) -> None:
        """Write the manifest atomically (a kill mid-write leaves the previous one), on rank zero only."""
        if is_rank_zero():
            write_atomically(self.path, json.dumps(self.data, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: a kill mid-write leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def record_finished_stage(manifest: Manifest, stage: StageSpec, config: dict, paths: StagePaths, meta: dict) -> None:
    """Fill a finished stage's entry from its final checkpoint's metadata ``meta`` and its logs."""
    start, final = first_and_last(read_scalars(paths.logs))
    start_step, end_step = int(meta.get("global_step_offset", 0)), int(meta["global_step"])
    fields: dict[str, Any] = {
        "checkpoint": str(paths.final),
        "global_step_start": start_step,
        "global_step": end_step,
        "steps": end_step - start_step,
        "tokens": int(meta.get("tokens_seen", 0)),
        "rope_base": meta.get("rope_base"),
        "seq_len": stage_seq_len(config),
        "start_metrics": start,
        "final_metrics": final,
    }
    if stage.metric is not None:
        fields["metric"] = headline(stage.metric.name, stage.metric.mode, start, final)
    manifest.finish_stage(stage.name, fields)


def stage_seq_len(config: dict) -> int | None:
    """The row length a stage trains at: ``RoPEBaseSwitch``'s when it sets one, else the datamodule's."""
    switched = get_at(config, "trainer.callbacks.RoPEBaseSwitch.init_args.seq_len")
    return switched if switched is not None else get_at(config, "data.init_args.seq_len")


def headline(name: str, mode: str, start: dict[str, float], final: dict[str, float]) -> dict[str, Any]:
    """A stage's headline figure before and after, and whether it beat its starting value."""
    before, after = start.get(name), final.get(name)
    improved = None if before is None or after is None else (after < before if mode == "min" else after > before)
    return {"name": name, "mode": mode, "start": before, "final": after, "improved": improved}
