"""One stage's process: started as ``mm-lightning fit --config <run_dir>/<stage>/config.yaml``, stopped, judged.

:func:`launch_stage` writes the stage's composed config, records the start in the manifest and starts the process
(in the terminal, or writing to ``<stage>/output.log`` when it runs beside another stage, with the CPU threads it is
given); :func:`finish_stage` records how it ended (rank zero decides; other ranks wait for that verdict) and raises
:class:`PipelineStopped` with the way to continue when it did not finish; :func:`stop_stages` passes Ctrl-C or
SIGTERM on to running stages and waits for them to stop cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import yaml

from mm_lightning.callbacks.nonfinite import NONFINITE_EXIT_CODE
from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import Stopped, Terminated
from mm_lightning.pipeline.manifest import Manifest, is_rank_zero, record_finished_stage, write_atomically
from mm_lightning.pipeline.plan import StagePlan
from mm_lightning.pipeline.spec import PipelineSpec, StagePaths, get_at, stage_paths

VERDICT_TIMEOUT_S = 900  # how long other ranks wait for rank zero to record a stage's outcome
STOP_GRACE_S = 60  # how long a stage told to stop may take to write its checkpoint before it is killed


class PipelineStopped(Stopped):
    """A stage did not finish (it failed or was interrupted); the message says how to continue."""


@dataclasses.dataclass
class LaunchedStage:
    """A stage whose process runs: what :func:`finish_stage` needs to record it."""

    plan: StagePlan
    process: subprocess.Popen
    paths: StagePaths
    config_file: Path
    attempt: int
    started: float
    output: IO[str] | None = None  # the open ``output.log`` of a stage that does not hold the terminal

    @property
    def name(self) -> str:
        return self.plan.stage.name


def launch_stage(
    spec: PipelineSpec, plan: StagePlan, manifest: Manifest, threads: int | None = None, to_file: bool = False
) -> LaunchedStage:
    """Start one stage as ``mm-lightning fit`` in its own process and record the start.

    Args:
        threads: CPU threads for the stage (``OMP_NUM_THREADS``, unless the environment sets it); ``None``: all.
        to_file: write the stage's output to ``<stage>/output.log`` (appended) instead of the terminal.
    """
    paths = stage_paths(spec.run_dir, plan.stage.name)
    config_file = _write_stage_config(plan, paths)
    manifest.start_stage(plan.stage, plan.digest, paths, fresh=plan.action == "run")
    attempt = manifest.stage(plan.stage.name)["attempts"]
    command = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", str(config_file)]
    if plan.resume_from is not None:
        command += ["--ckpt_path", str(plan.resume_from)]
    env = stage_environment(plan.index)
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    output = None
    if to_file:
        paths.root.mkdir(parents=True, exist_ok=True)
        output = (paths.root / "output.log").open("a")
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    return LaunchedStage(plan, process, paths, config_file, attempt, time.perf_counter(), output)


def finish_stage(spec: PipelineSpec, launched: LaunchedStage, manifest: Manifest, redo_given: bool = False) -> None:
    """Record how the ended stage went; raise :class:`PipelineStopped` (with how to continue) unless it finished."""
    exit_code = launched.process.returncode
    plan, paths = launched.plan, launched.paths
    if launched.output is not None:
        launched.output.close()
    if launched.config_file != paths.config:
        launched.config_file.unlink(missing_ok=True)
    if not is_rank_zero():
        _await_verdict(manifest.path, plan.stage.name, launched.attempt, exit_code)
        return
    manifest.add_wall_time(plan.stage.name, time.perf_counter() - launched.started)
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
        if launched.output is not None:
            advice += f" (its output: {paths.root / 'output.log'})"
        raise PipelineStopped(f"stage {plan.stage.name!r} {problem}; {advice}.", _exit_status(exit_code))
    record_finished_stage(manifest, plan.stage, plan.config, paths, meta)


def stop_stages(running: list[LaunchedStage], stop: BaseException) -> int:
    """Pass a stop on to the running stages and wait for each (killed after ``STOP_GRACE_S``); the exit code to
    record for them: 130 after Ctrl-C (which the terminal sent the whole process group), 143 after SIGTERM."""
    terminated = isinstance(stop, Terminated)
    for launched in running:
        if terminated:  # Ctrl-C reaches the whole process group; SIGTERM may not
            launched.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for launched in running:
        try:
            launched.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt, Terminated):
            launched.process.kill()
            launched.process.wait()
    return 143 if terminated else 130


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


def temporary_config(plan: StagePlan) -> Path:
    """The stage's composed config in a private temporary file (the caller removes it)."""
    handle, name = tempfile.mkstemp(prefix=f"mm_lightning_{plan.stage.name}_", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        f.write(yaml.safe_dump(plan.config, sort_keys=False))
    return Path(name)


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
        return temporary_config(plan)
    if plan.set_aside:
        _set_aside(paths.root, paths.root.parent)
    write_atomically(paths.config, yaml.safe_dump(plan.config, sort_keys=False))
    return paths.config


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
