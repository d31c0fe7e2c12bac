"""The demo pipeline with every stage cut to a few steps (the plumbing, not the learning), and how to run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "pipelines" / "demo.yaml"
FEW_PASSKEYS = {  # 4 prompts at one length (the stages' 30 at two cost ~8 s a validation: ~90 s across the suite)
    "trainer.callbacks.PasskeyEvaluation.init_args.lengths": [256],
    "trainer.callbacks.PasskeyEvaluation.init_args.prompts": 4,
}
FEW_SCENES = {  # 8 scenes and 8 pairs (the stages' 100 and 64 cost ~4 s a validation: ~12 s a VLM stage)
    "trainer.callbacks.CaptionChecks.init_args.scenes": 8,
    "trainer.callbacks.CaptionChecks.init_args.gap_pairs": 8,
}
FEW_COPIES = {  # 2 copy-check rows at 128 tokens (the stages' 8 at 256 and 1,024 cost ~2.5 s a validation)
    "trainer.callbacks.CopyCheck.init_args.lengths": [128],
    "trainer.callbacks.CopyCheck.init_args.rows": 2,
}
FEW_PROBES = {"trainer.callbacks.EmojiIdentityProbe.init_args.backgrounds": 2}  # 128 probe images, not 640: ~3 s each
SHORT = {  # a few steps each, small validations, no loader workers: the plumbing, not the learning
    "text": {"trainer.max_steps": 4, "trainer.limit_val_batches": 2, **FEW_PASSKEYS, **FEW_COPIES},
    "vit": {
        "trainer.max_steps": 4,
        "trainer.limit_val_batches": 2,
        "model.init_args.schedule.total_steps": 4,
        **FEW_PROBES,
    },
    "align": {
        "trainer.max_steps": 4,
        "data.init_args.val_batches": 2,
        "model.init_args.schedule.total_steps": 4,
        **FEW_SCENES,
    },
    "joint": {
        "trainer.max_steps": 6,
        "data.init_args.samples_per_batch": 6,
        "data.init_args.val_batches": 1,
        **FEW_SCENES,
        **FEW_COPIES,
    },
    "cooldown": {
        "trainer.max_steps": 4,
        "data.init_args.samples_per_batch": 6,
        "data.init_args.val_batches": 1,
        **FEW_SCENES,
        **FEW_COPIES,
    },
    "long_context": {
        "trainer.max_steps": 2,
        "data.init_args.samples_per_batch": 2,
        "data.init_args.val_batches": 1,
        **FEW_PASSKEYS,
        **FEW_SCENES,
        **FEW_COPIES,
        "trainer.callbacks.PasskeyEvaluation.init_args.frame_counts": [],
    },
}
EVERY_STAGE = {
    "trainer.val_check_interval": 2,
    "trainer.callbacks.StageCheckpoint.init_args.every_n_train_steps": 2,
    "data.init_args.num_workers": 0,
    "throughput.window_size": 2,  # FLOP/s from the second step on: every stage logs some (test_tensorboard_events.py)
}
SPARSE_LOGS = {"trainer.log_every_n_steps": 2}  # the stages whose configs log every 10 steps log some in 4
WARMUPS = {"model.init_args.schedule.warmup_steps": 1, "model.init_args.schedule.decay_steps": 1}
KILL = {"class_path": "helpers.pipeline_kill.KillPipelineAtStep", "init_args": {"step": 3}}


def short_demo_pipeline(folder: Path) -> Path:
    """The demo pipeline file with every stage shortened, running into ``folder/run``."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["run_dir"] = str(folder / "run")
    for stage in spec["stages"]:
        stage["config"] = [
            str(ROOT / path) for path in ([stage["config"]] if isinstance(stage["config"], str) else stage["config"])
        ]
        overrides = stage.setdefault("overrides", {})
        overrides.update(EVERY_STAGE | SHORT[stage["name"]])
        if stage["name"] in ("text", "vit", "align"):
            overrides.update(WARMUPS | SPARSE_LOGS)
        if stage["name"] == "cooldown":
            overrides["trainer.callbacks.ReWarmup.init_args.warmup_steps"] = 1
        if stage["name"] == "joint":
            overrides["trainer.callbacks+"] = KILL
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_pipeline_command(pipeline: Path, kill: bool = False) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("MM_TEST_KILL_PIPELINE", None)
    if kill:
        env["MM_TEST_KILL_PIPELINE"] = "1"
    command = [sys.executable, "-m", "mm_lightning.cli", "pipeline", "--config", str(pipeline)]
    return subprocess.run(
        command, cwd=pipeline.parent, env=env, capture_output=True, text=True, timeout=900, start_new_session=True
    )


def seed_finished_stages(source: Path, target: Path, names: Sequence[str]) -> None:
    """Give run folder ``target`` the finished stages ``names`` of run folder ``source``: their folders, and their
    manifest entries with every path moved to ``target``, as if ``target`` had run them (a run folder may move).

    A test that needs a pipeline stopped in a later stage starts from these instead of training them again. Their
    checkpoints are hard links (:func:`link_checkpoints`), the other files copies.
    """
    for name in names:
        shutil.copytree(source / name, target / name, copy_function=link_checkpoints)
    moved = (source / "manifest.json").read_text().replace(json.dumps(str(source))[1:-1], json.dumps(str(target))[1:-1])
    manifest = json.loads(moved)
    manifest["stages"] = [entry for entry in manifest["stages"] if entry["name"] in names]
    assert [entry["status"] for entry in manifest["stages"]] == ["finished"] * len(names), manifest["stages"]
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))


def link_checkpoints(source: str, target: str) -> None:
    """A ``copytree`` copy function: checkpoints hard-linked (big; the stages only ever replace one by rename, never
    write through it), other files copied."""
    (os.link if source.endswith(".ckpt") else shutil.copy2)(source, target)
