"""The pipeline's plan (dependency order, subsets, skip and resume), its config composition and its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mm_lightning.checkpoint import META_KEY
from mm_lightning.cli import main
from mm_lightning.errors import ConfigError
from mm_lightning.pipeline.manifest import Manifest
from mm_lightning.pipeline.plan import newest_checkpoint, plan_pipeline
from mm_lightning.pipeline.spec import (
    compose_stage_config,
    get_at,
    load_pipeline,
    merge_configs,
    set_at,
    stage_paths,
)

ROOT = Path(__file__).resolve().parents[2]
STAGE_CONFIG = {
    "trainer": {
        "max_steps": 10,
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "runs/x"}},
            {"class_path": "mm_lightning.callbacks.LRSchedulerResume", "init_args": {"checkpoint": "old.ckpt"}},
        ],
    },
    "model": {"class_path": "mm_lightning.stages.JointStage", "init_args": {"llm_checkpoint": "old.ckpt"}},
}


def write_pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    """A pipeline file in ``tmp_path`` whose stages all use one small stage config."""
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump(STAGE_CONFIG))
    for stage in stages:
        stage.setdefault("config", str(config))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def recipe_stages() -> list[dict]:
    """The recipe's graph, listed out of order: text and vit are independent, the joint stages chain."""
    llm = "model.init_args.llm_checkpoint"
    return [
        {"name": "joint", "inputs": {llm: "text", "model.init_args.vision_checkpoint": "align"}},
        {"name": "text"},
        {"name": "align", "inputs": {llm: "text", "model.init_args.vit_checkpoint": "vit"}},
        {"name": "vit"},
        {"name": "cooldown", "inputs": {llm: "joint"}},
    ]


def finish(spec, manifest: Manifest, name: str, digest: str | None = None) -> None:
    """Mark stage ``name`` finished with a final checkpoint file, as a completed run leaves it."""
    final = stage_paths(spec.run_dir, name).final
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"checkpoint")
    entry = next(entry for entry in manifest.data["stages"] if entry["name"] == name)
    entry.update(status="finished", finished_at="2026-01-01T00:00:00", global_step=10)
    if digest is not None:
        entry["digest"] = digest


def test_stages_run_after_what_they_consume_and_keep_the_file_order_otherwise(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    assert spec.names == ["text", "vit", "align", "joint", "cooldown"]
    plans = plan_pipeline(spec, Manifest.load_or_create(spec))
    assert [(plan.stage.name, plan.action, plan.index, plan.total) for plan in plans] == [
        ("text", "run", 1, 5),
        ("vit", "run", 2, 5),
        ("align", "run", 3, 5),
        ("joint", "run", 4, 5),
        ("cooldown", "run", 5, 5),
    ]
    assert "stage 4/5 joint" in plans[3].header and "from text, align" in plans[3].header


def test_a_cycle_an_unknown_input_and_duplicate_names_are_refused(tmp_path: Path) -> None:
    llm = "model.init_args.llm_checkpoint"
    with pytest.raises(ConfigError, match="cycle"):
        load_pipeline(
            write_pipeline(tmp_path, [{"name": "a", "inputs": {llm: "b"}}, {"name": "b", "inputs": {llm: "a"}}])
        )
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        load_pipeline(write_pipeline(tmp_path, [{"name": "a", "inputs": {llm: "nope"}}]))
    with pytest.raises(ConfigError, match="repeated: a"):
        load_pipeline(write_pipeline(tmp_path, [{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_pipeline(write_pipeline(tmp_path, [{"name": "a", "overides": {}}]))


def test_inputs_overrides_and_outputs_are_written_into_the_stage_config(tmp_path: Path) -> None:
    stages = recipe_stages()
    stages[0]["inputs"]["trainer.callbacks.LRSchedulerResume.init_args.checkpoint"] = "text"
    stages[0]["overrides"] = {"trainer.max_steps": 3, "trainer.callbacks+": {"class_path": "x.Extra"}}
    spec = load_pipeline(write_pipeline(tmp_path, stages))
    config = compose_stage_config(spec.stage("joint"), spec.run_dir)
    text_final = str(spec.run_dir / "text" / "checkpoints" / "last.ckpt")
    assert get_at(config, "model.init_args.llm_checkpoint") == text_final
    assert get_at(config, "model.init_args.vision_checkpoint") == str(spec.run_dir / "align/checkpoints/last.ckpt")
    assert get_at(config, "trainer.callbacks.LRSchedulerResume.init_args.checkpoint") == text_final
    assert get_at(config, "trainer.max_steps") == 3
    assert get_at(config, "trainer.callbacks.Extra.class_path") == "x.Extra"
    assert get_at(config, "trainer.callbacks.ModelCheckpoint.init_args") == {
        "dirpath": str(spec.run_dir / "joint" / "checkpoints"),
        "save_last": True,
    }
    assert get_at(config, "trainer.logger.init_args") == {
        "default_hp_metric": False,  # no hp_metric = -1 placeholder; the config's other arguments would be kept
        "save_dir": str(spec.run_dir),
        "name": "joint",
        "version": "logs",
    }
    assert get_at(STAGE_CONFIG, "model.init_args.llm_checkpoint") == "old.ckpt"  # the stage file is not changed


def test_the_routed_logger_keeps_the_stage_configs_tensorboard_arguments(tmp_path: Path) -> None:
    stages = recipe_stages()
    logger = "trainer.logger.init_args"
    stages[0]["overrides"] = {f"{logger}.default_hp_metric": True, f"{logger}.prefix": "p"}
    spec = load_pipeline(write_pipeline(tmp_path, stages))
    args = get_at(compose_stage_config(spec.stage("joint"), spec.run_dir), logger)
    assert args == {"default_hp_metric": True, "prefix": "p", "save_dir": str(spec.run_dir), "name": "joint",
                    "version": "logs"}  # fmt: skip


def test_dotted_keys_name_list_items_by_class_and_fail_clearly() -> None:
    config = merge_configs(STAGE_CONFIG, {"model": {"init_args": {"handoff": "continue"}}})
    assert get_at(config, "model.init_args") == {"llm_checkpoint": "old.ckpt", "handoff": "continue"}
    replaced = merge_configs(STAGE_CONFIG, {"model": {"class_path": "other.Stage", "init_args": {"a": 1}}})
    assert replaced["model"] == {"class_path": "other.Stage", "init_args": {"a": 1}}
    set_at(config, "trainer.callbacks.1.init_args.checkpoint", "new.ckpt")
    assert get_at(config, "trainer.callbacks.LRSchedulerResume.init_args.checkpoint") == "new.ckpt"
    with pytest.raises(ConfigError, match="0 items of class ReWarmup"):
        set_at(config, "trainer.callbacks.ReWarmup.init_args.peak_lr", 1.0)
    with pytest.raises(ConfigError, match="under a plain value"):
        set_at(config, "trainer.max_steps.value", 1)


def test_finished_stages_are_skipped_and_a_subset_needs_its_inputs(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    manifest = Manifest.load_or_create(spec)
    digests = {plan.stage.name: plan.digest for plan in plan_pipeline(spec, manifest)}
    with pytest.raises(ConfigError, match="needs the finished checkpoint of stage 'text'"):
        plan_pipeline(spec, manifest, only=["align"])
    for name in ("text", "vit"):
        finish(spec, manifest, name, digests[name])
    plans = plan_pipeline(spec, manifest)
    assert [plan.action for plan in plans] == ["skip", "skip", "run", "run", "run"]
    assert [plan.stage.name for plan in plan_pipeline(spec, manifest, only=["align"])] == ["align"]
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        plan_pipeline(spec, manifest, only=["nope"])


def test_a_changed_config_is_refused_and_redo_restarts_the_stage_and_its_consumers(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    manifest = Manifest.load_or_create(spec)
    for name in ("text", "vit", "align"):
        finish(spec, manifest, name, digest="from-another-config" if name == "vit" else None)
    with pytest.raises(ConfigError, match="stage 'vit' .* different config.*--redo vit"):
        plan_pipeline(spec, manifest)
    plans = {plan.stage.name: plan.action for plan in plan_pipeline(spec, manifest, redo=["vit"])}
    assert plans == {"text": "skip", "vit": "run", "align": "run", "joint": "run", "cooldown": "run"}


def test_a_stopped_stage_resumes_from_its_newest_readable_checkpoint(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    manifest = Manifest.load_or_create(spec)
    paths = stage_paths(spec.run_dir, "text")
    paths.checkpoints.mkdir(parents=True)
    torch.save({META_KEY: {"global_step": 5}}, paths.checkpoints / "step5.ckpt")
    with pytest.raises(ConfigError, match="no record of stage 'text'; pass --redo text"):
        plan_pipeline(spec, manifest)  # checkpoints the manifest does not know: not resumed blindly
    manifest.start_stage(spec.stage("text"), plan_pipeline(spec, manifest, redo=["text"])[0].digest, paths, True)
    manifest.stop_stage("text", "was interrupted")
    torch.save({META_KEY: {"global_step": 10}}, paths.checkpoints / "step10.ckpt")
    (paths.checkpoints / "last.ckpt").write_bytes(b"truncated by a kill")  # newer, but unreadable
    assert newest_checkpoint(paths.checkpoints) == (paths.checkpoints / "step10.ckpt", 10)
    text = plan_pipeline(spec, manifest)[0]
    assert (text.action, text.resume_from) == ("resume", paths.checkpoints / "step10.ckpt")
    torch.save({META_KEY: {"global_step": 12}}, paths.root / "hpc_ckpt_1.ckpt")  # a SLURM requeue's
    assert plan_pipeline(spec, manifest)[0].resume_from == paths.root / "hpc_ckpt_1.ckpt"
    assert newest_checkpoint(tmp_path / "nothing") is None
    for path in paths.checkpoints.glob("step*.ckpt"):
        path.write_bytes(b"garbage")
    (paths.root / "hpc_ckpt_1.ckpt").unlink()
    with pytest.raises(ConfigError, match="none of the checkpoints .* can be read"):
        plan_pipeline(spec, manifest)  # not a silent start from step 0


def test_a_consumer_reruns_when_its_input_ran_again_even_across_separate_commands(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    manifest = Manifest.load_or_create(spec)
    for plan in plan_pipeline(spec, manifest):  # a whole run, in order, as run_stage records it
        manifest.start_stage(plan.stage, plan.digest, stage_paths(spec.run_dir, plan.stage.name), fresh=True)
        finish(spec, manifest, plan.stage.name)
    assert {plan.action for plan in plan_pipeline(spec, manifest)} == {"skip"}
    assert [p.action for p in plan_pipeline(spec, manifest, only=["joint", "cooldown"])] == ["skip", "skip"]
    text = next(plan for plan in plan_pipeline(spec, manifest, redo=["text"]) if plan.stage.name == "text")
    manifest.start_stage(text.stage, text.digest, stage_paths(spec.run_dir, "text"), fresh=True)  # --redo text
    finish(spec, manifest, "text")  # ... with --stages text only; then the plain command:
    actions = {plan.stage.name: (plan.action, plan.reason) for plan in plan_pipeline(spec, manifest)}
    assert actions == {
        "text": ("skip", "finished at step 10"),
        "vit": ("skip", "finished at step 10"),
        "align": ("run", "text ran again since"),
        "joint": ("run", "after align"),
        "cooldown": ("run", "after joint"),
    }
    with pytest.raises(ConfigError, match="needs the finished checkpoint of stage 'align'"):
        plan_pipeline(spec, manifest, only=["joint"])  # align is out of date


def test_the_manifest_keeps_entries_in_pipeline_order_and_survives_a_reload(tmp_path: Path) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, recipe_stages()))
    manifest = Manifest.load_or_create(spec)
    paths = stage_paths(spec.run_dir, "text")
    manifest.start_stage(spec.stage("text"), "abc", paths, fresh=True)
    manifest.add_wall_time("text", 12.34)
    manifest.stop_stage("text", "was interrupted")
    reloaded = Manifest.load_or_create(spec)
    entry = reloaded.stage("text")
    assert entry["status"] == "stopped" and entry["attempts"] == 1 and entry["wall_time_s"] == 12.3
    reloaded.start_stage(spec.stage("text"), "abc", paths, fresh=False)  # resumed: time and attempts add up
    reloaded.add_wall_time("text", 1.0)
    assert reloaded.stage("text")["attempts"] == 2 and reloaded.stage("text")["wall_time_s"] == 13.3
    reloaded.start_stage(spec.stage("text"), "abc", paths, fresh=True)  # started over (--redo): from zero
    assert reloaded.stage("text")["attempts"] == 1 and reloaded.stage("text")["wall_time_s"] == 0.0
    manifest = reloaded
    assert entry["log_dir"] == str(spec.run_dir / "text" / "logs")
    assert [entry["name"] for entry in reloaded.data["stages"]] == spec.names
    assert reloaded.stage("vit") is None
    assert json.loads(manifest.path.read_text())["pipeline"] == "t"
    manifest.path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Manifest.load_or_create(spec)


def test_file_wide_and_command_line_overrides_reach_every_stage_and_runtime_keys_keep_a_stage_fresh(
    tmp_path: Path,
) -> None:
    path = write_pipeline(tmp_path, [{"name": "a", "overrides": {"trainer.max_steps": 4}}, {"name": "b"}])
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(raw | {"overrides": {"trainer.max_steps": 7, "trainer.devices": 1}}))
    spec = load_pipeline(path, overrides={"trainer.gradient_clip_val": 0.5})
    composed = {stage.name: compose_stage_config(stage, spec.run_dir)["trainer"] for stage in spec.stages}
    assert composed["a"]["max_steps"] == 4 and composed["b"]["max_steps"] == 7  # the stage's own key wins
    assert composed["a"]["gradient_clip_val"] == composed["b"]["gradient_clip_val"] == 0.5
    manifest = Manifest.load_or_create(spec)
    finish(spec, manifest, "a", plan_pipeline(spec, manifest)[0].digest)
    more_gpus = load_pipeline(path, overrides={"trainer.gradient_clip_val": 0.5, "trainer.devices": 8})
    assert plan_pipeline(more_gpus, manifest)[0].action == "skip"
    other_clip = load_pipeline(path, overrides={"trainer.gradient_clip_val": 1.0})
    with pytest.raises(ConfigError, match="different config"):
        plan_pipeline(other_clip, manifest)


def test_the_command_reports_mistakes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(tmp_path, recipe_stages())
    for argv, message in [
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        (["--config", str(path), "--stages", "nope"], "no stage 'nope'"),
        (["--config", str(path), "--set", "trainer.max_steps"], "--set takes KEY=VALUE"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(["pipeline", *argv])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
    demo = ROOT / "configs" / "pipelines" / "demo.yaml"
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:  # a typo in a key is caught before any stage runs
        main(["pipeline", "--config", str(demo), "--run-dir", str(tmp_path / "demo"), "--set", "trainer.max_stepz=3"])
    assert stop.value.code == 2
    assert "stage 'text': the composed config does not parse" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "--config", str(demo), "--run-dir", str(tmp_path / "demo"), "--dry-run"])
    assert stop.value.code == 0
    assert "stage 4/6 joint: joint pre-training (recipe stage 3)" in capsys.readouterr().out
    assert not (tmp_path / "demo").exists()  # a dry run writes nothing


def test_bars_are_checked_when_the_file_loads_and_follow_the_file_into_the_manifest(tmp_path: Path) -> None:
    for bars, message in [
        ([0.3], "`bars` maps validation tags"),
        ({"image_use_gap": 0.3}, "'image_use_gap' is not a validation tag"),
        ({"val/image_use_gap": "high"}, "must be a number, not 'high'"),
        ({"val/image_use_gap": True}, "must be a number, not True"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_pipeline(write_pipeline(tmp_path, [{"name": "align", "bars": bars}]))
    path = write_pipeline(tmp_path, [{"name": "align", "bars": {"val/image_use_gap": 0.3}}])
    spec = load_pipeline(path)
    assert spec.stage("align").bars == {"val/image_use_gap": 0.3}
    manifest = Manifest.load_or_create(spec)
    manifest.start_stage(spec.stage("align"), "abc", stage_paths(spec.run_dir, "align"), fresh=True)
    assert manifest.stage("align")["bars"] == {"val/image_use_gap": 0.3}
    raw = yaml.safe_load(path.read_text())
    raw["stages"][0]["bars"] = {"val/image_use_gap": 0.5}  # a bar changed after the run: the summary judges by it
    path.write_text(yaml.safe_dump(raw))
    assert Manifest.load_or_create(load_pipeline(path)).stage("align")["bars"] == {"val/image_use_gap": 0.5}
