"""The pipeline's plan: for each selected stage, in dependency order, whether to run, resume or skip it.

Every fresh start of a stage gets a new run id in the manifest, and a stage records the run ids of the inputs
it consumed. A finished stage is skipped while its composed config is unchanged and its inputs are still the
runs it consumed; a stage whose input runs again, or ran again since, starts over after it (its old files
set aside). A changed config is refused rather than silently retrained: ``--redo`` says so explicitly.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from mm_lightning.checkpoint import checkpoint_meta, load_checkpoint
from mm_lightning.errors import ConfigError
from mm_lightning.pipeline.manifest import Manifest
from mm_lightning.pipeline.spec import PipelineSpec, StageSpec, compose_stage_config, config_digest, get_at
from mm_lightning.pipeline.spec import stage_paths as paths_of


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


def plan_pipeline(
    spec: PipelineSpec, manifest: Manifest, only: list[str] | None = None, redo: list[str] | None = None
) -> list[StagePlan]:
    """Decide, for each selected stage in dependency order, whether to run, resume or skip it.

    Args:
        spec: the pipeline.
        manifest: the run folder's manifest.
        only: the stages to consider (``--stages``); the inputs of these must be finished and current.
        redo: stages to start over (``--redo``); the stages that consume them follow.
    """
    for name in (only or []) + (redo or []):
        spec.stage(name)  # a clear error for an unknown name
    selected = [stage for stage in spec.stages if only is None or stage.name in only]
    planned: dict[str, StagePlan] = {}
    for stage in selected:
        for name in stage.needs:
            if name not in planned and (name in (redo or []) or not is_current(spec, manifest, name)):
                raise ConfigError(
                    f"stage {stage.name!r} needs the finished checkpoint of stage {name!r}, which this run does not "
                    f"have (or which is out of date); add {name} to --stages, or run the whole pipeline."
                )
        config = compose_stage_config(stage, spec.run_dir)
        digest = config_digest(config, spec.run_dir)
        plan = StagePlan(stage, spec.names.index(stage.name) + 1, len(spec.stages), "run", "", config, digest)
        planned[stage.name] = plan
        _decide(spec, plan, manifest, planned, stage.name in (redo or []))
    return list(planned.values())


def is_current(spec: PipelineSpec, manifest: Manifest, name: str) -> bool:
    """Whether stage ``name`` finished, its checkpoint is there, and its inputs are still the runs it consumed."""
    entry = manifest.stage(name)
    if not manifest.is_finished(name) or not paths_of(spec.run_dir, name).final.is_file():
        return False
    needs = spec.stage(name).needs
    consumed = entry.get("consumed", {})
    return all(consumed.get(up) == manifest.run_id(up) and is_current(spec, manifest, up) for up in needs)


def _decide(spec: PipelineSpec, plan: StagePlan, manifest: Manifest, planned: dict, redo: bool) -> None:
    """Set ``plan``'s action: start over, skip, resume, or run (with a reason for the header)."""
    name, paths = plan.stage.name, paths_of(spec.run_dir, plan.stage.name)
    rerun_inputs = [up for up in plan.stage.needs if up in planned and planned[up].action == "run"]
    if redo or rerun_inputs:
        plan.set_aside = paths.root.exists()
        plan.reason = "--redo" if redo else f"after {', '.join(rerun_inputs)}"
        return
    entry = manifest.stage(name)
    if entry is None:
        if list(paths.checkpoints.glob("*.ckpt")):
            raise ConfigError(
                f"{paths.checkpoints} holds checkpoints, but the manifest has no record of stage {name!r}; pass "
                f"--redo {name} to start it over (its files are set aside), or another --run-dir."
            )
        plan.set_aside = paths.root.exists()
        return
    if entry.get("digest") not in (None, plan.digest):
        raise ConfigError(
            f"stage {name!r} in {spec.run_dir} ran with a different config than the pipeline file composes now; "
            f"start it (and what consumes it) over with --redo {name}, or pass another --run-dir."
        )
    changed = [up for up in plan.stage.needs if entry.get("consumed", {}).get(up) != manifest.run_id(up)]
    if changed:
        plan.set_aside, plan.reason = paths.root.exists(), f"{', '.join(changed)} ran again since"
        return
    if manifest.is_finished(name) and paths.final.is_file():
        plan.action, plan.reason = "skip", f"finished at step {entry.get('global_step')}"
        return
    newest = newest_checkpoint(paths.checkpoints, paths.root)
    if newest is not None:
        plan.action, plan.resume_from = "resume", newest[0]
        plan.reason = f"from {newest[0].name}, step {newest[1]}"
    else:
        plan.set_aside = paths.root.exists()  # an attempt that left no checkpoint: start over beside it


def newest_checkpoint(folder: Path, requeue_folder: Path | None = None) -> tuple[Path, int] | None:
    """The readable checkpoint with the highest global step (``last.ckpt`` wins a tie), or ``None`` if none.

    Candidates are ``folder/*.ckpt`` and, in ``requeue_folder``, the ``hpc_ckpt_*.ckpt`` Lightning writes
    when SLURM requeues a job. A file that cannot be read (a kill while writing it) is passed over with a
    note; if there are checkpoints and none can be read, the plan refuses instead of starting over.
    """
    candidates = list(folder.glob("*.ckpt"))
    if requeue_folder is not None:
        candidates += list(requeue_folder.glob("hpc_ckpt_*.ckpt"))
    best: tuple[Path, int] | None = None
    problems = []
    for path in sorted(candidates, key=lambda p: (p.name == "last.ckpt", p.name)):
        try:
            step = int(checkpoint_meta(load_checkpoint(path), path)["global_step"])
        except Exception as error:  # a truncated or foreign file: pass over it, say so
            problems.append(f"{path}: {error}")
            print(f"mm-lightning pipeline: passing over unreadable checkpoint {path}: {error}", file=sys.stderr)
            continue
        if best is None or step >= best[1]:
            best = (path, step)
    if candidates and best is None:
        raise ConfigError(f"none of the checkpoints in {folder} can be read ({problems[0]}); move them away or --redo.")
    return best
