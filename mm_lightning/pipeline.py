"""The pipeline runner: the recipe's stages in dependency order, each one a normal ``mm-lightning fit``.

Each stage runs as its own ``mm-lightning fit --config <run_dir>/<stage>/config.yaml`` process, exactly what a
user would type for one stage, so a launch that works for one stage (``torchrun``, ``srun``, Lightning's own
process launcher) works for the pipeline: every rank runs the pipeline, and every rank's pipeline starts the
same stage processes in the same order. Rank zero keeps ``<run_dir>/manifest.json``; a rerun of the same
command skips finished stages, continues a stage that stopped from its newest readable checkpoint, and
starts the rest.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import ConfigError, MMLightningError
from mm_lightning.pipeline_config import (
    PipelineSpec,
    StagePaths,
    StageSpec,
    compose_stage_config,
    config_digest,
    get_at,
    stage_paths,
)
from mm_lightning.pipeline_manifest import Manifest, is_rank_zero, record_finished_stage


class PipelineStopped(MMLightningError):
    """A stage did not finish (it failed or was interrupted); the message says how to continue."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass
class StagePlan:
    """What the pipeline will do with one stage: ``run`` it, ``resume`` it from a checkpoint, or ``skip`` it."""

    stage: StageSpec
    index: int
    total: int
    action: str
    reason: str
    config: dict[str, Any]
    digest: str
    resume_from: Path | None = None
    set_aside: bool = False

    @property
    def header(self) -> str:
        """The one line printed before the stage starts."""
        steps = get_at(self.config, "trainer.max_steps")
        parts = [f"stage {self.index}/{self.total} {self.stage.name}: {self.stage.title}"]
        parts.append(" + ".join(str(path) for path in self.stage.configs))
        if self.stage.needs:
            parts.append(f"from {', '.join(self.stage.needs)}")
        if isinstance(steps, int) and steps > 0:
            parts.append(f"{steps} steps")
        parts.append(f"{self.action}{f' ({self.reason})' if self.reason else ''}")
        return " · ".join(parts)


def dependents(spec: PipelineSpec, names: set[str]) -> set[str]:
    """``names`` and every stage that consumes their checkpoints, directly or through other stages."""
    found = set(names)
    for stage in spec.stages:  # dependency order: a consumer comes after what it consumes
        if set(stage.needs) & found:
            found.add(stage.name)
    return found


def plan_pipeline(
    spec: PipelineSpec, manifest: Manifest, only: list[str] | None = None, redo: list[str] | None = None
) -> list[StagePlan]:
    """Decide, for each selected stage in dependency order, whether to run, resume or skip it.

    A finished stage is skipped while its composed config and its inputs' runs are unchanged; otherwise the
    plan refuses with a message that names the stage and ``--redo``. ``redo`` stages and everything that
    consumes them start over.
    """
    for name in (only or []) + (redo or []):
        spec.stage(name)  # a clear error for an unknown name
    selected = [stage for stage in spec.stages if only is None or stage.name in only]
    fresh = dependents(spec, set(redo or []))
    planned: dict[str, StagePlan] = {}
    for stage in selected:
        _check_inputs_available(spec, stage, manifest, planned, fresh)
        config = compose_stage_config(stage, spec.run_dir)
        upstream_runs = {name: manifest.finished_at(name) if name not in planned else None for name in stage.needs}
        digest = config_digest(config | {"pipeline_inputs": upstream_runs})
        planned[stage.name] = _plan_stage(spec, stage, manifest, config, digest, stage.name in fresh)
    total = len(spec.stages)
    for plan in planned.values():
        plan.total = total
    return list(planned.values())


def _check_inputs_available(
    spec: PipelineSpec, stage: StageSpec, manifest: Manifest, planned: dict[str, StagePlan], fresh: set[str]
) -> None:
    for name in stage.needs:
        if name in planned:
            continue
        if name in fresh or not manifest.is_finished(name) or not stage_paths(spec.run_dir, name).final.is_file():
            raise ConfigError(
                f"stage {stage.name!r} needs the finished checkpoint of stage {name!r}, which this run does not "
                f"have yet; add {name} to --stages (or run the whole pipeline)."
            )


def _plan_stage(
    spec: PipelineSpec, stage: StageSpec, manifest: Manifest, config: dict, digest: str, fresh: bool
) -> StagePlan:
    index = spec.names.index(stage.name) + 1
    plan = StagePlan(stage, index, len(spec.stages), "run", "", config, digest)
    paths = stage_paths(spec.run_dir, stage.name)
    if fresh:
        plan.set_aside = paths.root.exists()
        plan.reason = "--redo" if plan.set_aside else ""
        return plan
    entry = manifest.stage(stage.name)
    if entry and entry.get("digest") not in (None, digest):
        raise ConfigError(
            f"stage {stage.name!r} in {spec.run_dir} ran with a different config or different inputs than the "
            f"pipeline file gives now; rerun it (and what consumes it) with --redo {stage.name}, or pass another "
            "--run-dir."
        )
    if manifest.is_finished(stage.name) and paths.final.is_file():
        plan.action, plan.reason = "skip", f"finished at step {entry.get('global_step')}"
        return plan
    newest = newest_checkpoint(paths.checkpoints)
    if newest is not None:
        plan.action, plan.resume_from = "resume", newest[0]
        plan.reason = f"from {newest[0].name}, step {newest[1]}"
    else:
        plan.set_aside = paths.root.exists()  # an attempt that left no checkpoint: start over beside it
    return plan


def newest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The readable checkpoint with the highest global step in ``folder`` (``last.ckpt`` wins a tie).

    A file that cannot be read (a kill in the middle of writing it) is passed over with a note.
    """
    best: tuple[Path, int] | None = None
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.name)):
        try:
            step = int(checkpoint_meta(load_checkpoint(path), path)["global_step"])
        except Exception as error:  # a truncated or foreign file: skip it, say so
            print(f"mm-lightning pipeline: passing over unreadable checkpoint {path}: {error}", file=sys.stderr)
            continue
        if best is None or step >= best[1]:
            best = (path, step)
    return best


def run_pipeline(
    spec: PipelineSpec, only: list[str] | None = None, redo: list[str] | None = None, dry_run: bool = False
) -> Manifest:
    """Run the plan; returns the manifest (also in ``<run_dir>/manifest.json``). ``dry_run`` only prints it."""
    manifest = Manifest.load_or_create(spec)
    plans = plan_pipeline(spec, manifest, only, redo)
    if dry_run:
        print_plan(spec, plans)
        return manifest
    for plan in plans:
        _say(plan.header)
        if plan.action != "skip":
            run_stage(spec, plan, manifest)
    if is_rank_zero():
        from mm_lightning.report import format_summary, write_report

        png, summary = write_report(manifest.data, spec.run_dir)
        print(format_summary(manifest.data))
        print(f"mm-lightning pipeline: manifest {manifest.path}, report {png}, summary {summary}")
    return manifest


def print_plan(spec: PipelineSpec, plans: list[StagePlan]) -> None:
    """The plan, one stage a line, and where each stage's composed config would be written."""
    print(f"pipeline {spec.name} ({spec.path}) -> {spec.run_dir}")
    for plan in plans:
        print("  " + plan.header)
        for key, source in plan.stage.inputs.items():
            print(f"      {key} <- {stage_paths(spec.run_dir, source).final}")
        print(f"      config: {stage_paths(spec.run_dir, plan.stage.name).config}")


def _say(line: str) -> None:
    if is_rank_zero():
        print(f"\n=== {line}", flush=True)


def run_stage(spec: PipelineSpec, plan: StagePlan, manifest: Manifest) -> None:
    """Run one stage as ``mm-lightning fit`` in its own process and record it; raise if it did not finish."""
    paths = stage_paths(spec.run_dir, plan.stage.name)
    config_file = _write_stage_config(plan, paths)
    manifest.start_stage(plan.stage, plan.digest, paths, fresh=plan.action == "run")
    command = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", str(config_file)]
    if plan.resume_from is not None:
        command += ["--ckpt_path", str(plan.resume_from)]
    started = time.perf_counter()
    try:
        exit_code = _wait_for(subprocess.Popen(command, env=stage_environment(plan.index)))
    finally:
        if config_file != paths.config:
            config_file.unlink(missing_ok=True)
    manifest.add_wall_time(plan.stage.name, time.perf_counter() - started)
    problem = _unfinished(plan, paths.final, exit_code)
    if problem:
        manifest.stop_stage(plan.stage.name, problem)
        resume = "run the same command again to continue it from its newest checkpoint"
        raise PipelineStopped(f"stage {plan.stage.name!r} {problem}; {resume}.", exit_code or 1)
    record_finished_stage(manifest, plan.stage, plan.config, paths)


def _write_stage_config(plan: StagePlan, paths: StagePaths) -> Path:
    """Rank zero writes ``<stage>/config.yaml`` (after moving an earlier attempt aside when starting over);
    other ranks run the same config from a private temporary file, so they never race it in the run folder."""
    text = yaml.safe_dump(plan.config, sort_keys=False)
    if not is_rank_zero():
        handle, name = tempfile.mkstemp(prefix=f"mm_lightning_{plan.stage.name}_", suffix=".yaml")
        with os.fdopen(handle, "w") as f:
            f.write(text)
        return Path(name)
    if plan.set_aside:
        _set_aside(paths.root, paths.root.parent)
    _write_atomically(paths.config, text)
    return paths.config


def stage_environment(index: int) -> dict[str, str]:
    """The environment of stage ``index``'s process: this process's, with a fresh rendezvous under torchrun.

    torchrun's workers join their process group through the agent's store, which keeps the keys of the
    group before: a second stage's ranks would read the first stage's (closed) addresses. Each stage's rank
    zero hosts a store of its own instead, on the agent's port + ``index``.
    """
    env = dict(os.environ)
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and env.get("MASTER_PORT", "").isdigit():
        env["TORCHELASTIC_USE_AGENT_STORE"] = "False"
        env["MASTER_PORT"] = str(int(env["MASTER_PORT"]) + index)
    return env


def _wait_for(process: subprocess.Popen) -> int:
    """The stage's exit code; on Ctrl-C (which the stage also receives) give it time to stop cleanly."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
            process.wait()
        return 130


def _unfinished(plan: StagePlan, final: Path, exit_code: int) -> str:
    """Why the stage cannot count as finished, or ``""``."""
    if exit_code == 130:
        return "was interrupted"
    if exit_code != 0:
        return f"failed (exit code {exit_code}; its messages are above)"
    if not final.is_file():
        return f"ended without writing {final}"
    meta = checkpoint_meta(load_checkpoint(final), final)
    max_steps = get_at(plan.config, "trainer.max_steps")
    done = int(meta["global_step"]) - int(meta.get("global_step_offset", 0))
    if isinstance(max_steps, int) and max_steps > 0 and done < max_steps:
        return f"stopped after {done} of {max_steps} steps"
    return ""


def _set_aside(folder: Path, run_dir: Path) -> None:
    """Move an earlier attempt's folder to ``<run_dir>/replaced/`` (never delete a user's checkpoints)."""
    target = run_dir / "replaced" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    print(f"mm-lightning pipeline: moved the earlier {folder.name} files to {target}", flush=True)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)
