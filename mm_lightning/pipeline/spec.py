"""The pipeline file: which stages run, in which order, from which stage configs, and what each one consumes.

A pipeline file (``configs/pipelines/*.yaml``) lists stages. Each names its stage config files (stacked as
``mm-lightning fit --config a.yaml --config b.yaml`` would stack them), dotted-key ``overrides``, and
``inputs``: config keys that receive another stage's final checkpoint. The inputs are the dependency graph:

    stages:
      - name: joint
        title: joint pre-training
        config: configs/joint_pretrain/tiny.yaml
        overrides: {trainer.max_steps: 60}
        inputs:
          model.init_args.llm_checkpoint: text
          model.init_args.vision_checkpoint: align
          trainer.callbacks.LRSchedulerResume.init_args.checkpoint: text
        bars: {val/image_use_gap: 0.5}  # optional: what the summary judges the stage on (pipeline/verdict.py)

A dotted key walks dicts by name and lists by index or by class name (``trainer.callbacks.ModelCheckpoint``
is the callback whose ``class_path`` ends in ``ModelCheckpoint``); a key ending in ``+`` appends to a list.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from mm_lightning.errors import ConfigError

STAGE_KEYS = {"name", "title", "config", "overrides", "inputs", "metric", "bars"}
PIPELINE_KEYS = {"name", "run_dir", "overrides", "stages", "concurrent_stages"}
# how a stage runs, not what it computes: changing these does not make a finished stage stale
RUNTIME_KEYS = ("trainer.devices", "trainer.num_nodes", "trainer.strategy", "data.init_args.num_workers")
HIGHER_IS_BETTER = ("r@", "passkey", "acc", "copy@", "copy_gain@")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A stage's headline evaluation figure: a logged validation tag and which way is better."""

    name: str
    mode: str = "min"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline file."""

    name: str
    title: str
    configs: tuple[Path, ...]
    overrides: dict[str, Any]
    inputs: dict[str, str]
    metric: MetricSpec | None
    bars: dict[str, float] = dataclasses.field(default_factory=dict)
    """Validation tag -> the value it must reach by the stage's end (judged in the summary, never stops a run)."""

    @property
    def needs(self) -> list[str]:
        """The stages whose checkpoints this one consumes, in first-mention order."""
        return list(dict.fromkeys(self.inputs.values()))


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline file; ``stages`` are in dependency order (ties keep the file's order)."""

    name: str
    path: Path
    run_dir: Path
    stages: tuple[StageSpec, ...]
    concurrent_stages: int = 1  # stages run at once when none consumes another's checkpoint (runner)

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``, or a clear error listing the known ones."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"{self.path}: no stage {name!r}; the stages are {', '.join(self.names)}.")

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or a ``ConfigError`` that names the file."""
    path = Path(path)
    if not path.is_file():
        relative = "" if path.is_absolute() else f" (relative paths start from the current folder, {Path.cwd()})"
        raise ConfigError(f"config file {path} does not exist{relative}.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a YAML mapping at the top level.")
    return loaded


def load_pipeline(
    path: str | Path,
    run_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    concurrent_stages: int | None = None,
) -> PipelineSpec:
    """Parse and check a pipeline file.

    Args:
        path: the pipeline file.
        run_dir: replaces the file's ``run_dir``.
        overrides: dotted keys set in every stage, after the file's top-level and per-stage ``overrides``.
        concurrent_stages: replaces the file's ``concurrent_stages`` (default 1: one stage at a time).
    """
    path = Path(path)
    raw = load_yaml(path)
    _refuse_unknown(raw, PIPELINE_KEYS, f"{path}")
    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: `stages` must be a non-empty list.")
    common = raw.get("overrides") or {}
    if not isinstance(common, dict):
        raise ConfigError(f"{path}: `overrides` must be a mapping of dotted config keys.")
    stages = [_parse_stage(entry, i, path, common, overrides or {}) for i, entry in enumerate(entries)]
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{path}: stage names must be unique; repeated: {', '.join(duplicates)}.")
    for stage in stages:
        for key, source in stage.inputs.items():
            if source not in names:
                raise ConfigError(f"{path}: stage {stage.name!r} input {key} names an unknown stage {source!r}.")
    name = str(raw.get("name", path.stem))
    folder = Path(run_dir if run_dir is not None else raw.get("run_dir", f"runs/pipelines/{name}"))
    width = raw.get("concurrent_stages", 1) if concurrent_stages is None else concurrent_stages
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        where = f"{path}: `concurrent_stages`" if concurrent_stages is None else "--concurrent"
        raise ConfigError(f"{where} is a whole number of stages, 1 or more, not {width!r}.")
    ordered = tuple(order_stages(stages, path))
    return PipelineSpec(name=name, path=path, run_dir=folder.absolute(), stages=ordered, concurrent_stages=width)


def _refuse_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}.")


def _parse_stage(entry: Any, position: int, path: Path, common: dict, extra: dict) -> StageSpec:
    where = f"{path}: stage {position + 1}"
    if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
        raise ConfigError(f"{where} must be a mapping with at least `name` and `config`.")
    _refuse_unknown(entry, STAGE_KEYS, where)
    configs = entry["config"] if isinstance(entry["config"], list) else [entry["config"]]
    for key in ("overrides", "inputs"):
        if not isinstance(entry.get(key, {}), dict):
            raise ConfigError(f"{where} ({entry['name']}): `{key}` must be a mapping of dotted config keys.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(entry["name"])) or entry["name"] == "replaced":
        raise ConfigError(f"{where}: a stage name is letters, digits, _ and - (and not 'replaced'): {entry['name']!r}.")
    return StageSpec(
        name=str(entry["name"]),
        title=str(entry.get("title", entry["name"])),
        configs=tuple(Path(config) for config in configs),
        overrides=common | entry.get("overrides", {}) | extra,
        inputs={str(key): str(value) for key, value in entry.get("inputs", {}).items()},
        metric=_parse_metric(entry.get("metric"), where),
        bars=_parse_bars(entry.get("bars", {}), f"{where} ({entry['name']})"),
    )


def _parse_bars(value: Any, where: str) -> dict[str, float]:
    """``{val/<tag>: number}``, or a ``ConfigError`` naming what is wrong."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `bars` maps validation tags to the value each must reach, e.g. "
                          f"{{val/image_use_gap: 0.3}}, not {value!r}.")  # fmt: skip
    bars = {}
    for tag, bar in value.items():
        if not (isinstance(tag, str) and tag.startswith("val/")):
            raise ConfigError(f"{where}: `bars` key {tag!r} is not a validation tag (they start with 'val/').")
        if isinstance(bar, bool) or not isinstance(bar, (int, float)) or bar != bar:
            raise ConfigError(f"{where}: `bars` value for {tag} must be a number, not {bar!r}.")
        bars[tag] = float(bar)
    return bars


def _parse_metric(value: Any, where: str) -> MetricSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        higher = any(marker in value for marker in HIGHER_IS_BETTER)
        return MetricSpec(name=value, mode="max" if higher else "min")
    if isinstance(value, dict) and set(value) <= {"name", "mode"} and value.get("mode", "min") in ("min", "max"):
        return MetricSpec(name=str(value["name"]), mode=str(value.get("mode", "min")))
    raise ConfigError(f"{where}: `metric` is a tag name or {{name: <tag>, mode: min|max}}, not {value!r}.")


def order_stages(stages: list[StageSpec], path: Path | str = "<pipeline>") -> list[StageSpec]:
    """Stages in dependency order: each after the stages it consumes, otherwise in the file's order."""
    remaining = list(stages)
    ordered: list[StageSpec] = []
    while remaining:
        done = {stage.name for stage in ordered}
        ready = next((stage for stage in remaining if set(stage.needs) <= done), None)
        if ready is None:
            cycle = ", ".join(f"{stage.name} <- {'/'.join(stage.needs)}" for stage in remaining)
            raise ConfigError(f"{path}: the stages' inputs form a cycle: {cycle}.")
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def merge_configs(base: Any, overlay: Any) -> Any:
    """``overlay`` stacked on ``base``: mappings merge key by key, anything else is replaced.

    A mapping that names a different ``class_path`` replaces the old one whole, as its arguments differ.
    """
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return copy.deepcopy(overlay)
    if "class_path" in overlay and overlay["class_path"] != base.get("class_path"):
        return copy.deepcopy(overlay)
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        merged[key] = merge_configs(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def _child(node: Any, part: str, key: str) -> Any:
    """The element ``part`` of a dict or list (by index or class name), or a clear error."""
    if isinstance(node, dict):
        if part not in node:
            raise ConfigError(f"config key {key}: no {part!r} here (found: {', '.join(map(str, node)) or 'nothing'}).")
        return node[part]
    if isinstance(node, list):
        if part.lstrip("-").isdigit():
            if not -len(node) <= int(part) < len(node):
                raise ConfigError(f"config key {key}: index {part} is outside a list of {len(node)}.")
            return node[int(part)]
        matches = [item for item in node if isinstance(item, dict) and _class_name(item) == part]
        if len(matches) != 1:
            found = ", ".join(_class_name(item) or "?" for item in node if isinstance(item, dict)) or "nothing"
            raise ConfigError(f"config key {key}: {len(matches)} items of class {part} (the list holds {found}).")
        return matches[0]
    raise ConfigError(f"config key {key}: {part!r} is under a plain value, not a mapping or list.")


def _class_name(item: dict) -> str:
    return str(item.get("class_path", "")).rsplit(".", 1)[-1]


def get_at(config: dict, key: str, default: Any = None) -> Any:
    """The value at dotted ``key``, or ``default`` when any part of the path is missing."""
    try:
        node: Any = config
        for part in key.split("."):
            node = _child(node, part, key)
        return node
    except ConfigError:
        return default


def set_at(config: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` (mappings on the way are created; ``key+`` appends ``value`` to a list)."""
    append = key.endswith("+")
    parts = key.rstrip("+").split(".")
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = _child(node, part, key)
    last = parts[-1]
    if append:
        target = node.setdefault(last, []) if isinstance(node, dict) else _child(node, last, key)
        if not isinstance(target, list):
            raise ConfigError(f"config key {key}: `+` appends to a list, but {last!r} is not one.")
        target.append(copy.deepcopy(value))
    elif isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    elif isinstance(node, list):
        target = _child(node, last, key)
        node[node.index(target)] = copy.deepcopy(value)
    else:
        raise ConfigError(f"config key {key}: cannot set {last!r} under a plain value.")


def config_digest(config: dict, run_dir: Path) -> str:
    """A short hash of what a stage computes: a finished stage is reused only while this stays the same.

    The ``RUNTIME_KEYS`` are left out, so a resumed run may use another number of GPUs or nodes, and so is the
    run folder's location, so the folder may move.
    """
    config = json.loads(json.dumps(config, default=str).replace(json.dumps(str(run_dir))[1:-1], "<run_dir>"))
    for key in RUNTIME_KEYS:
        parent, _, last = key.rpartition(".")
        node = get_at(config, parent)
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Where a stage of a pipeline run keeps its files: ``<run_dir>/<stage>/...``."""

    root: Path

    @property
    def config(self) -> Path:
        """The composed stage config the pipeline runs (``mm-lightning fit --config`` this file)."""
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        """TensorBoard events, and Lightning's fully resolved ``config.yaml``."""
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        """The checkpoint later stages consume: ``last.ckpt`` once the stage has finished."""
        return self.checkpoints / "last.ckpt"


def stage_paths(run_dir: Path, name: str) -> StagePaths:
    return StagePaths(run_dir / name)


def compose_stage_config(stage: StageSpec, run_dir: Path) -> dict[str, Any]:
    """The stage's config files stacked, its overrides and inputs applied, and its outputs routed into the run.

    Logs go to ``<run_dir>/<stage>/logs`` (TensorBoard, which the manifest and report read back) and every
    checkpoint callback writes to ``<run_dir>/<stage>/checkpoints`` with ``save_last`` on.
    """
    config: dict[str, Any] = {}
    for path in stage.configs:
        config = merge_configs(config, load_yaml(path))
    try:
        for key, value in stage.overrides.items():
            set_at(config, key, value)
        for key, source in stage.inputs.items():
            set_at(config, key, str(stage_paths(run_dir, source).final))
    except ConfigError as error:
        raise ConfigError(f"stage {stage.name!r}: {error}") from None
    paths = stage_paths(run_dir, stage.name)
    trainer = config.setdefault("trainer", {})
    callbacks = trainer.get("callbacks") or []
    if not isinstance(callbacks, list):
        raise ConfigError(
            f"stage {stage.name!r}: trainer.callbacks must be a list (an override may have made it a mapping)."
        )
    if get_at(config, "trainer.strategy.init_args.save_distributed_checkpoint") is True:
        raise ConfigError(
            f"stage {stage.name!r}: the pipeline hands one-file checkpoints to the next stage; set "
            "trainer.strategy.init_args.save_distributed_checkpoint: false."
        )
    trainer["logger"] = _route_logger(trainer.get("logger", True), run_dir, stage.name)
    trainer["callbacks"] = _route_checkpoints(callbacks, paths.checkpoints)
    trainer["default_root_dir"] = str(paths.root)  # where Lightning puts a SLURM requeue's hpc_ckpt_*.ckpt
    return config


TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def _route_logger(logger: Any, run_dir: Path, name: str) -> Any:
    """The stage's logger(s) with a TensorBoard logger writing to ``<run_dir>/<name>/logs`` (the stage config's other
    TensorBoard arguments kept; no ``hp_metric = -1`` placeholder unless it asks for one)."""
    if logger is False:
        raise ConfigError(f"stage {name!r}: the pipeline reads TensorBoard logs back; drop `trainer.logger: false`.")
    loggers = logger if isinstance(logger, list) else [] if logger in (None, True) else [logger]
    tensorboard = [item for item in loggers if isinstance(item, dict) and _class_name(item) == "TensorBoardLogger"]
    kept = [item for item in loggers if not any(item is found for found in tensorboard)]
    given = (tensorboard[0].get("init_args") or {}) if tensorboard else {}
    routed_args = {"default_hp_metric": False, **given, "save_dir": str(run_dir), "name": name, "version": "logs"}
    routed = {"class_path": TENSORBOARD, "init_args": routed_args}
    return [routed, *kept] if kept else routed


CHECKPOINT_CALLBACKS = ("StageCheckpoint", "ModelCheckpoint")


def _route_checkpoints(callbacks: list, dirpath: Path) -> list:
    """Every checkpoint callback pointed at ``dirpath`` with ``save_last``; one is added when there is none."""
    callbacks = copy.deepcopy(callbacks)
    checkpoints = [item for item in callbacks if isinstance(item, dict) and _class_name(item) in CHECKPOINT_CALLBACKS]
    if not checkpoints:
        checkpoints.append({"class_path": "mm_lightning.callbacks.StageCheckpoint"})
        callbacks.append(checkpoints[0])
    for position, item in enumerate(checkpoints):  # one writes last.ckpt; a second would write last-v1.ckpt
        item.setdefault("init_args", {}).update(dirpath=str(dirpath), save_last=position == 0)
    return callbacks
