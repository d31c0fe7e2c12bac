"""Stages side by side (``concurrent_stages``): the runner's scheduling, with short fake processes for the stages.

The real launch (``mm-lightning fit`` per stage, the side stage's ``output.log``) runs in the demo pipeline's tests,
whose file sets ``concurrent_stages: 2``; here each stage is a Python process that sleeps, so what is checked is
the order: which stages overlap, which wait for their inputs, the threads each gets, and what a failure stops.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import recipe_stages, write_pipeline

from mm_lightning.errors import ConfigError
from mm_lightning.pipeline import runner
from mm_lightning.pipeline.manifest import Manifest
from mm_lightning.pipeline.plan import plan_pipeline
from mm_lightning.pipeline.spec import load_pipeline, stage_paths
from mm_lightning.pipeline.stage_process import LaunchedStage, PipelineStopped

SLEEP_S = 0.6


class FakeStages:
    """Stands in for ``launch_stage`` / ``finish_stage``: each stage sleeps ``SLEEP_S`` (exit 1 if it is to fail)."""

    def __init__(self, failing: str | None = None, sleeps: dict[str, float] | None = None) -> None:
        self.failing = failing
        self.sleeps = sleeps or {}
        self.spans: dict[str, list[float]] = {}
        self.threads: dict[str, int | None] = {}
        self.to_file: dict[str, bool] = {}

    def launch(self, spec, plan, manifest, threads=None, to_file=False) -> LaunchedStage:
        name = plan.stage.name
        code = 1 if name == self.failing else 0
        sleep = self.sleeps.get(name, SLEEP_S)
        process = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({sleep}); raise SystemExit({code})"]
        )
        self.spans[name] = [time.monotonic()]
        self.threads[name], self.to_file[name] = threads, to_file
        paths = stage_paths(spec.run_dir, name)
        return LaunchedStage(plan, process, paths, paths.config, 1, time.perf_counter(), None)

    def finish(self, spec, launched, manifest, redo_given=False) -> None:
        self.spans[launched.name].append(time.monotonic())
        if launched.process.returncode != 0:
            raise PipelineStopped(f"stage {launched.name!r} failed", 1)

    def overlap(self, a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = self.spans[a], self.spans[b]
        return a0 < b1 and b0 < a1


def run_fake(
    tmp_path: Path, monkeypatch, width: int, failing: str | None = None, stages: list[dict] | None = None, **sleeps
) -> tuple[FakeStages, str | None]:
    fake = FakeStages(failing, sleeps)
    monkeypatch.setattr(runner, "launch_stage", fake.launch)
    monkeypatch.setattr(runner, "finish_stage", fake.finish)
    monkeypatch.setattr(runner, "_cores", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spec = load_pipeline(write_pipeline(tmp_path, stages or recipe_stages()), concurrent_stages=width)
    manifest = Manifest.load_or_create(spec)
    try:
        runner._run_stages(spec, manifest, plan_pipeline(spec, manifest), redo_given=False)
    except PipelineStopped as stopped:
        return fake, str(stopped)
    return fake, None


def test_independent_stages_run_side_by_side_and_the_rest_after_their_inputs(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    fake, failure = run_fake(tmp_path, monkeypatch, width=2)
    headers = {line.split()[3].rstrip(":"): line for line in capsys.readouterr().out.splitlines() if " stage " in line}
    assert headers["text"].endswith("· run · beside vit on 2 CPU threads"), headers["text"]
    assert f"· beside text on 2 CPU threads · output in {tmp_path / 'run' / 'vit' / 'output.log'}" in headers["vit"]
    assert "beside" not in headers["align"]
    assert failure is None and set(fake.spans) == {"text", "vit", "align", "joint", "cooldown"}
    assert fake.overlap("text", "vit")  # neither consumes the other
    for stage, inputs in {"align": ("text", "vit"), "joint": ("text", "align"), "cooldown": ("joint",)}.items():
        assert all(fake.spans[stage][0] >= fake.spans[up][1] for up in inputs), (stage, fake.spans)
    assert fake.threads["text"] == fake.threads["vit"] == 2  # 4 cores, 2 stages
    assert fake.threads["align"] is None and fake.threads["joint"] is None  # alone: every core
    assert fake.to_file == {"text": False, "vit": True, "align": False, "joint": False, "cooldown": False}


def test_a_stage_that_may_run_beside_another_gets_its_share_of_threads_even_when_it_starts_alone(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # the long demo's graph: the ViT is independent of the warm-up and of stage 1, which needs the warm-up; here the
    # ViT ends long before the warm-up, so stage 1 starts alone, and still gets the threads it would get beside it
    llm = "model.init_args.llm_checkpoint"
    stages = [
        {"name": "warmup"},
        {"name": "text", "inputs": {llm: "warmup"}},
        {"name": "vit"},
        {"name": "align", "inputs": {llm: "text", "model.init_args.vit_checkpoint": "vit"}},
    ]
    fake, failure = run_fake(tmp_path, monkeypatch, width=2, stages=stages, vit=0.05)
    assert failure is None and fake.spans["vit"][1] < fake.spans["text"][0]
    assert fake.threads == {"warmup": 2, "vit": 2, "text": 2, "align": None}
    headers = {line.split()[3].rstrip(":"): line for line in capsys.readouterr().out.splitlines() if " stage " in line}
    assert headers["text"].endswith("· on 2 CPU threads, as when it runs beside a stage independent of it")
    assert "CPU thread" not in headers["align"], headers["align"]


def test_one_stage_at_a_time_by_default(tmp_path: Path, monkeypatch) -> None:
    fake, failure = run_fake(tmp_path, monkeypatch, width=1)
    assert failure is None and not fake.overlap("text", "vit")
    assert set(fake.threads.values()) == {None} and not any(fake.to_file.values())


def test_under_several_ranks_stages_run_one_at_a_time(tmp_path: Path, monkeypatch) -> None:
    fake = FakeStages()
    monkeypatch.setattr(runner, "launch_stage", fake.launch)
    monkeypatch.setattr(runner, "finish_stage", fake.finish)
    monkeypatch.setenv("WORLD_SIZE", "2")
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()), concurrent_stages=2)
    manifest = Manifest.load_or_create(spec)
    runner._run_stages(spec, manifest, plan_pipeline(spec, manifest), redo_given=False)
    assert not fake.overlap("text", "vit")


def test_a_failed_stage_lets_the_one_beside_it_finish_and_starts_nothing_new(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    fake, failure = run_fake(tmp_path, monkeypatch, width=2, failing="text")
    assert failure == "stage 'text' failed"
    assert set(fake.spans) == {"text", "vit"} and len(fake.spans["vit"]) == 2  # vit ran to its end and was recorded
    assert "waiting for vit, running beside it, to finish" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_concurrent_stages_must_be_a_whole_number_from_one(tmp_path: Path, value) -> None:
    path = write_pipeline(tmp_path, [{"name": "a"}])
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(raw | {"concurrent_stages": value}))
    with pytest.raises(ConfigError, match="concurrent_stages"):
        load_pipeline(path)
    assert load_pipeline(path, concurrent_stages=3).concurrent_stages == 3  # --concurrent replaces the file's
    with pytest.raises(ConfigError, match="^--concurrent is a whole number"):
        load_pipeline(path, concurrent_stages=0)
