"""The pipeline runner: the recipe's stages in dependency order, each one a normal ``mm-lightning fit``.

Each stage runs as its own ``mm-lightning fit --config <run_dir>/<stage>/config.yaml`` process, exactly what a
user would type for one stage, so a launch that works for one stage (``torchrun``, ``srun``, Lightning's own
process launcher) works for the pipeline: every rank runs the pipeline, and every rank's pipeline starts the
same stage processes in the same order. Rank zero keeps ``<run_dir>/manifest.json`` and decides whether a
stage finished; the other ranks wait for its verdict there. A rerun of the same command skips finished
stages, continues a stage that stopped from its newest readable checkpoint, and runs the rest
(:mod:`~mm_lightning.pipeline.plan`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mm_lightning.callbacks.nonfinite import NONFINITE_EXIT_CODE
from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import ConfigError, Stopped, Terminated
from mm_lightning.fit import check_fit_config
from mm_lightning.pipeline.manifest import Manifest, is_rank_zero, record_finished_stage, write_atomically
from mm_lightning.pipeline.plan import StagePlan, plan_pipeline
from mm_lightning.pipeline.report import format_summary, write_report
from mm_lightning.pipeline.scene_grid import write_caption_grid
from mm_lightning.pipeline.spec import PipelineSpec, StagePaths, get_at, stage_paths
from mm_lightning.run_lock import RunLock

VERDICT_TIMEOUT_S = 900  # how long other ranks wait for rank zero to record a stage's outcome


class PipelineStopped(Stopped):
    """A stage did not finish (it failed or was interrupted); the message says how to continue."""


def run_pipeline(
    spec: PipelineSpec, only: list[str] | None = None, redo: list[str] | None = None, dry_run: bool = False
) -> Manifest:
    """Run the plan; returns the manifest (also in ``<run_dir>/manifest.json``). ``dry_run`` only prints it.

    Every stage's composed config is checked first, writing nothing; then rank zero takes the run folder's lock for
    the whole run (a second pipeline on the same folder stops at once) and plans again under it.
    """
    manifest, plans = _checked_plan(spec, only, redo)
    if dry_run:
        print_plan(spec, plans)
        return manifest
    if not is_rank_zero():
        return _run_plans(spec, manifest, plans, redo)
    with RunLock(spec.run_dir, "pipeline run folder"):
        manifest, plans = _checked_plan(spec, only, redo)  # what another run may have changed meanwhile
        return _run_plans(spec, manifest, plans, redo)


def _checked_plan(
    spec: PipelineSpec, only: list[str] | None, redo: list[str] | None
) -> tuple[Manifest, list[StagePlan]]:
    manifest = Manifest.load_or_create(spec)
    plans = plan_pipeline(spec, manifest, only, redo)
    for plan in plans:  # a typo in a late stage's overrides is caught now, not hours into the run
        if plan.action != "skip":
            check_composed_config(plan)
    return manifest, plans


def _run_plans(spec: PipelineSpec, manifest: Manifest, plans: list[StagePlan], redo: list[str] | None) -> Manifest:
    _stop_on_sigterm()
    for plan in plans:
        _say(plan.header)
        if plan.action != "skip":
            run_stage(spec, plan, manifest, redo_given=bool(redo))
    if is_rank_zero():
        png, summary = write_report(manifest.data, spec.run_dir)
        captions = write_caption_grid(manifest.data, spec.run_dir)
        print(format_summary(manifest.data))
        drawn = f"captions {captions}" if captions else "no captions.png (no stage has a VLM checkpoint yet)"
        print(f"mm-lightning pipeline: manifest {manifest.path}, report {png}, summary {summary}, {drawn}")
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


def check_composed_config(plan: StagePlan) -> None:
    """Parse the stage's composed config through the ``fit`` command's parser (nothing is built)."""
    path = _temporary_config(plan)
    try:
        check_fit_config(path)
    except ConfigError as error:
        raise ConfigError(f"stage {plan.stage.name!r}: {error}") from None
    finally:
        path.unlink()


def _temporary_config(plan: StagePlan) -> Path:
    """The stage's composed config in a private temporary file (the caller removes it)."""
    handle, name = tempfile.mkstemp(prefix=f"mm_lightning_{plan.stage.name}_", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        f.write(yaml.safe_dump(plan.config, sort_keys=False))
    return Path(name)


def _stop_on_sigterm() -> None:
    """SIGTERM stops the pipeline like Ctrl-C (stage told, outcome recorded); SIGUSR1 (SLURM's warning before a
    requeue, which the stage's Lightning handles) no longer kills it. Only the main thread can set handlers."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    except ValueError:  # not the main thread (a notebook's worker thread): keep the defaults
        pass


def run_stage(spec: PipelineSpec, plan: StagePlan, manifest: Manifest, redo_given: bool = False) -> None:
    """Run one stage as ``mm-lightning fit`` in its own process and record it; raise if it did not finish."""
    paths = stage_paths(spec.run_dir, plan.stage.name)
    config_file = _write_stage_config(plan, paths)
    manifest.start_stage(plan.stage, plan.digest, paths, fresh=plan.action == "run")
    attempt = manifest.stage(plan.stage.name)["attempts"]
    command = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", str(config_file)]
    if plan.resume_from is not None:
        command += ["--ckpt_path", str(plan.resume_from)]
    started = time.perf_counter()
    try:
        exit_code = _wait_for(subprocess.Popen(command, env=stage_environment(plan.index)))
    finally:
        if config_file != paths.config:
            config_file.unlink(missing_ok=True)
    if not is_rank_zero():
        _await_verdict(manifest.path, plan.stage.name, attempt, exit_code)
        return
    manifest.add_wall_time(plan.stage.name, time.perf_counter() - started)
    problem, meta = _outcome(plan, paths.final, exit_code)
    if problem:
        manifest.stop_stage(plan.stage.name, problem)
        again = "run the same command without --redo" if redo_given else "run the same command again"
        if exit_code == 2:
            advice = "fix its config, then run the same command again"
        elif exit_code == NONFINITE_EXIT_CODE:
            advice = (
                f"lower its learning rate in the pipeline file, then run the same command with --redo {plan.stage.name}"
            )
        else:
            advice = f"{again} to continue it from its newest checkpoint"
        raise PipelineStopped(f"stage {plan.stage.name!r} {problem}; {advice}.", _exit_status(exit_code))
    record_finished_stage(manifest, plan.stage, plan.config, paths, meta)


def _await_verdict(manifest_path: Path, name: str, attempt: int, exit_code: int) -> None:
    """On ranks other than zero: wait until rank zero records attempt ``attempt`` of the stage as finished."""
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            stages = json.loads(manifest_path.read_text())["stages"]
            entry = next(entry for entry in stages if entry["name"] == name)
        except (OSError, ValueError, KeyError, StopIteration):  # not written yet, or mid-replace
            entry = {}
        if entry.get("attempts") == attempt and entry.get("status") == "finished":
            return
        if entry.get("attempts") == attempt and entry.get("status") == "stopped":
            raise PipelineStopped(f"stage {name!r} {entry.get('problem', 'stopped')} (rank zero's verdict)", 1)
        time.sleep(2)
    raise PipelineStopped(f"no outcome of stage {name!r} from rank zero in {VERDICT_TIMEOUT_S} s", exit_code or 1)


def _exit_status(exit_code: int) -> int:
    """The pipeline's exit status for a stage's: a stage killed by signal N gives 128 + N, as a shell would."""
    return 128 - exit_code if exit_code < 0 else exit_code or 1


def _write_stage_config(plan: StagePlan, paths: StagePaths) -> Path:
    """Rank zero writes ``<stage>/config.yaml`` (after moving an earlier attempt aside when starting over);
    other ranks run the same config from a private temporary file, so they never race it in the run folder."""
    if not is_rank_zero():
        return _temporary_config(plan)
    if plan.set_aside:
        _set_aside(paths.root, paths.root.parent)
    write_atomically(paths.config, yaml.safe_dump(plan.config, sort_keys=False))
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
    """The stage's exit code; on Ctrl-C or SIGTERM give the stage time to stop cleanly, then 130 or 143."""
    try:
        return process.wait()
    except (KeyboardInterrupt, Terminated) as stop:
        if isinstance(stop, Terminated):
            process.send_signal(signal.SIGTERM)  # Ctrl-C reaches the whole process group; SIGTERM may not
        try:
            process.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, Terminated):
            process.kill()
            process.wait()
        return 143 if isinstance(stop, Terminated) else 130


def _outcome(plan: StagePlan, final: Path, exit_code: int) -> tuple[str, dict]:
    """Why the stage cannot count as finished (``""`` if it can), and its final checkpoint's metadata."""
    if exit_code in (130, 143):
        return ("was interrupted" if exit_code == 130 else "was stopped (SIGTERM)"), {}
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name} (out of memory, or killed from outside?)", {}
    if exit_code == 2:
        return "refused its config (exit code 2; the message is above)", {}
    if exit_code == NONFINITE_EXIT_CODE:
        return "stopped on a NaN or infinite loss (exit code 3; the message is above)", {}
    if exit_code != 0:
        return f"failed (exit code {exit_code}; its messages are above)", {}
    if not final.is_file():
        return f"ended without writing {final}", {}
    meta = checkpoint_meta(load_checkpoint(final), final)
    max_steps = get_at(plan.config, "trainer.max_steps")
    done = int(meta["global_step"]) - int(meta.get("global_step_offset", 0))
    if isinstance(max_steps, int) and max_steps > 0 and done < max_steps:
        return f"stopped after {done} of {max_steps} steps", meta
    return "", meta


def _set_aside(folder: Path, run_dir: Path) -> None:
    """Move an earlier attempt's folder to ``<run_dir>/replaced/`` (never delete a user's checkpoints)."""
    target = run_dir / "replaced" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    print(f"mm-lightning pipeline: moved the earlier {folder.name} files to {target}", flush=True)
