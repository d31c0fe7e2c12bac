"""The pipeline runner: the recipe's stages in dependency order, each one a normal ``mm-lightning fit``.

Each stage runs as its own ``mm-lightning fit --config <run_dir>/<stage>/config.yaml`` process, exactly what a
user would type for one stage, so a launch that works for one stage (``torchrun``, ``srun``, Lightning's own
process launcher) works for the pipeline: every rank runs the pipeline, and every rank's pipeline starts the
same stage processes in the same order. Rank zero keeps ``<run_dir>/manifest.json`` and decides whether a
stage finished; the other ranks wait for its verdict there. A rerun of the same command skips finished
stages, continues a stage that stopped from its newest readable checkpoint, and runs the rest
(:mod:`~mm_lightning.pipeline.plan`).

Stages side by side: with ``concurrent_stages: N`` in the pipeline file (or ``--concurrent N``), up to N stages run
at once when none consumes another's checkpoint (the ``inputs`` are the dependency graph; nothing else orders
stages then). A stage that this run could put beside another (neither needs the other, directly or through other
stages) gets ``cores // N`` CPU threads (``OMP_NUM_THREADS``, unless the environment sets it), even when the other has
finished before it starts: its threads, and so its figures to the digit, do not hang on which stage ended first. The
others keep every core. On a small CPU this pays because a tiny stage's
matmuls run on two cores at only ~1.3-1.6x their speed on one (README, "Stages side by side"). The stage started
while no other runs keeps the terminal; one started beside it writes to ``<stage>/output.log``. When a stage
fails, no new stage starts; the ones beside it run to their end (their work is kept), then the pipeline stops with
the first failure. Under several ranks (``torchrun``, ``srun``) stages run one at a time.
"""

from __future__ import annotations

import os
import signal
import time

from mm_lightning.errors import ConfigError, Terminated
from mm_lightning.fit import check_fit_config
from mm_lightning.pipeline.manifest import Manifest, is_rank_zero
from mm_lightning.pipeline.plan import StagePlan, plan_pipeline
from mm_lightning.pipeline.report import format_duration, format_summary, write_report
from mm_lightning.pipeline.scene_grid import write_caption_grid
from mm_lightning.pipeline.spec import PipelineSpec, stage_paths
from mm_lightning.pipeline.stage_process import (
    LaunchedStage,
    PipelineStopped,
    finish_stage,
    launch_stage,
    stop_stages,
    temporary_config,
)
from mm_lightning.run_lock import RunLock

POLL_S = 0.2  # how often the runner looks whether a stage process ended


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
    started = time.perf_counter()
    try:
        _run_stages(spec, manifest, plans, bool(redo))
    finally:
        if is_rank_zero() and any(plan.action != "skip" for plan in plans):
            manifest.add_pipeline_time(time.perf_counter() - started)
    if is_rank_zero():
        png, summary = write_report(manifest.data, spec.run_dir)
        captions = write_caption_grid(manifest.data, spec.run_dir)
        print(format_summary(manifest.data))
        drawn = f"captions {captions}" if captions else "no captions.png (no stage has a VLM checkpoint yet)"
        print(f"mm-lightning pipeline: manifest {manifest.path}, report {png}, summary {summary}, {drawn}")
    return manifest


def _run_stages(spec: PipelineSpec, manifest: Manifest, plans: list[StagePlan], redo_given: bool) -> None:
    """Run the plans, up to ``spec.concurrent_stages`` at once (one under several ranks), each after its inputs."""
    width = spec.concurrent_stages if int(os.environ.get("WORLD_SIZE", "1")) == 1 else 1
    waiting, running = list(plans), []
    planned = {plan.stage.name for plan in plans}
    outside = {name for plan in plans for name in plan.stage.needs} - planned  # finished and current (plan checked)
    done = outside | {plan.stage.name for plan in plans if plan.action == "skip"}
    shared = _may_share(plans) if width > 1 else set()
    failure: PipelineStopped | None = None
    try:
        while waiting or running:
            ready = [plan for plan in waiting if set(plan.stage.needs) <= done] if failure is None else []
            for plan in [plan for plan in ready if plan.action == "skip"]:
                _say(plan.header)
                waiting.remove(plan)
            batch = [plan for plan in ready if plan.action != "skip"][: width - len(running)]
            together = [launched.name for launched in running] + [plan.stage.name for plan in batch]
            for plan in batch:
                threads = max(1, _cores() // width) if plan.stage.name in shared else None
                to_file = any(launched.output is None for launched in running)
                company = [name for name in together if name != plan.stage.name]
                _say(plan.header + _side_by_side_note(spec, plan, company, threads, to_file))
                running.append(launch_stage(spec, plan, manifest, threads, to_file))
                waiting.remove(plan)
            if not running:
                break  # what waits needs a stage that failed
            ended = _wait_for_one(running)
            running.remove(ended)
            try:
                finish_stage(spec, ended, manifest, redo_given)
            except PipelineStopped as stopped:
                failure = failure or stopped
                if running:
                    names = ", ".join(launched.name for launched in running)
                    _say(f"{stopped}; waiting for {names}, running beside it, to finish (Ctrl-C stops it too)")
                continue
            done.add(ended.name)
            if ended.output is not None or running:
                took = format_duration(time.perf_counter() - ended.started)
                still = f"; still running: {', '.join(launched.name for launched in running)}" if running else ""
                _say(f"stage {ended.name} finished in {took}{still}")
    except (KeyboardInterrupt, Terminated) as stop:
        exit_code = stop_stages(running, stop)
        for launched in running:
            if launched.process.returncode != 0:  # one that ended just before the stop keeps its own outcome
                launched.process.returncode = exit_code
            try:
                finish_stage(spec, launched, manifest, redo_given)
            except PipelineStopped as stopped:
                failure = failure or stopped
        if failure is None:
            raise
    if failure is not None:
        raise failure


def _may_share(plans: list[StagePlan]) -> set[str]:
    """The stages to run that could run beside another stage to run: neither needs the other, even indirectly."""
    needs = {plan.stage.name: set(plan.stage.needs) for plan in plans}
    above: dict[str, set[str]] = {}

    def ancestors(name: str) -> set[str]:
        if name not in above:
            above[name] = set()  # the graph has no cycles (the spec refuses them)
            above[name] = {up for need in needs.get(name, ()) for up in {need} | ancestors(need)}
        return above[name]

    to_run = [plan.stage.name for plan in plans if plan.action != "skip"]
    return {
        name
        for name in to_run
        if any(other != name and other not in ancestors(name) and name not in ancestors(other) for other in to_run)
    }


def _side_by_side_note(
    spec: PipelineSpec, plan: StagePlan, company: list[str], threads: int | None, to_file: bool
) -> str:
    """What a stage's header adds when it runs beside others: which, on how many threads, where its output goes."""
    on = "" if threads is None else f" on {threads} CPU thread{'s' if threads > 1 else ''}"
    if not company:
        return f" ·{on}, as when it runs beside a stage independent of it" if on else ""
    note = f" · beside {', '.join(company)}{on}"
    if to_file:
        note += f" · output in {stage_paths(spec.run_dir, plan.stage.name).root / 'output.log'}"
    return note


def _wait_for_one(running: list[LaunchedStage]) -> LaunchedStage:
    """The first of the running stages whose process ends (a single stage is simply waited for)."""
    if len(running) == 1:
        running[0].process.wait()
        return running[0]
    while True:
        for launched in running:
            if launched.process.poll() is not None:
                return launched
        time.sleep(POLL_S)


def _cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def print_plan(spec: PipelineSpec, plans: list[StagePlan]) -> None:
    """The plan, one stage a line, and where each stage's composed config would be written."""
    at_once = f", up to {spec.concurrent_stages} stages at once" if spec.concurrent_stages > 1 else ""
    print(f"pipeline {spec.name} ({spec.path}) -> {spec.run_dir}{at_once}")
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
    path = temporary_config(plan)
    try:
        check_fit_config(path)
    except ConfigError as error:
        raise ConfigError(f"stage {plan.stage.name!r}: {error}") from None
    finally:
        path.unlink()


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
