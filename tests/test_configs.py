"""Every YAML under configs/ parses through the CLI (config drift is caught with no compute)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mm_lightning.fit import CLI_CLASSES, ParseOnlyCLI, build_cli
from mm_lightning.pipeline.spec import compose_stage_config, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PIPELINES = sorted((CONFIGS / "pipelines").glob("*.yaml"))
STAGE_FILES = sorted(set(CONFIGS.rglob("*.yaml")) - set(PIPELINES))
STAGE_CONFIGS = [p for p in STAGE_FILES if "class_path: mm_lightning.stages." in p.read_text()]
OVERLAYS = [p for p in STAGE_FILES if "class_path: mm_lightning.stages." not in p.read_text()]


def parse(*config_files: Path) -> ParseOnlyCLI:
    args = ["fit"] + [arg for path in config_files for arg in ("--config", str(path))]
    return ParseOnlyCLI(**CLI_CLASSES, args=args, run=True)


def test_there_are_configs():
    assert STAGE_CONFIGS and OVERLAYS and PIPELINES


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_stage_of_a_pipeline_composes_and_parses(path, tmp_path, monkeypatch):
    """Each stage config as the pipeline composes it (inputs, overrides, run folder) is a valid ``fit`` config."""
    monkeypatch.chdir(ROOT)  # pipeline files name stage configs from the repository root
    spec = load_pipeline(path, run_dir=tmp_path)
    assert {"text", "vit", "align", "joint", "cooldown", "long_context"} <= set(spec.names)
    for stage in spec.stages:
        composed = tmp_path / f"{stage.name}.yaml"
        composed.write_text(yaml.safe_dump(compose_stage_config(stage, spec.run_dir)))
        cli = parse(composed)
        assert cli.config["fit"]["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path), stage.name
        assert cli.config["fit"]["trainer"]["logger"]["init_args"]["default_hp_metric"] is False, stage.name


# what the stage configs leave to StageCheckpoint's defaults: step<global step>.ckpt files, all kept, and last.ckpt
CHECKPOINT_POLICY = {"filename": "step{step}", "auto_insert_metric_name": False, "save_top_k": -1, "save_last": True}


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_parses_with_the_checkpoint_policy(path):
    config = parse(path).config["fit"]
    assert config["model"]["class_path"].startswith("mm_lightning.stages.")
    callbacks = config["trainer"]["callbacks"]
    (checkpoint,) = [item for item in callbacks if item["class_path"] == "mm_lightning.callbacks.StageCheckpoint"]
    assert {key: checkpoint["init_args"][key] for key in CHECKPOINT_POLICY} == CHECKPOINT_POLICY
    assert checkpoint["init_args"]["every_n_train_steps"] > 0
    assert config["trainer"]["logger"]["init_args"]["default_hp_metric"] is False  # no hp_metric = -1 placeholder


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_overlay_stacks_on_the_tiny_config(path):
    parse(CONFIGS / "text_pretrain" / "tiny.yaml", path)


def test_tiny_config_instantiates(mm_cache):
    cli = build_cli(["--config", str(CONFIGS / "text_pretrain" / "tiny.yaml")], run=False)
    assert type(cli.model).__name__ == "TextPretrainStage"
    assert cli.model.llm.config.vocab_size == 8192
    assert any(type(cb).__name__ == "TokenThroughputMonitor" for cb in cli.trainer.callbacks)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.init_args.llm=tinyy", "Unknown llm preset 'tinyy'; known presets: 1b, small, tiny"),
        ("--model.init_args.llm_overrides={n_layer: 3}", r"Unknown llm config field\(s\) \['n_layer'\]"),
        ("--data.init_args.data_path=/nonexistent/shards", "/nonexistent/shards"),
    ],
)
def test_cli_config_mistakes_get_one_clear_line(tmp_path, mm_cache, override, message):
    cmd = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", str(CONFIGS / "text_pretrain" / "tiny.yaml")]
    run = subprocess.run([*cmd, override], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert re.search(message, run.stderr), run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_the_128k_long_context_config_is_the_recipes_last_sub_stage():
    """128K rows, RoPE base 800,000, recomputed blocks, FSDP2 on one GPU (or N by two overrides), chunked loss."""
    path = CONFIGS / "joint_long_context" / "1b_fsdp2_128k.yaml"
    for gpus in (1, 8):
        extra = [] if gpus == 1 else ["--trainer.devices", "8", "--trainer.strategy.init_args.data_parallel_size", "8"]
        config = ParseOnlyCLI(**CLI_CLASSES, args=["fit", "--config", str(path), *extra], run=True).config["fit"]
        strategy = config["trainer"]["strategy"]
        assert strategy["class_path"].endswith("ModelParallelStrategy")
        assert int(config["trainer"]["devices"]) == strategy["init_args"]["data_parallel_size"] == gpus
    model = config["model"]["init_args"]
    assert model["activation_checkpointing"] and model["loss_chunk_size"] > 0
    (switch,) = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("RoPEBaseSwitch")]
    assert (switch["base"], switch["seq_len"]) == (800_000, 131_072)
