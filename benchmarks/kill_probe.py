"""Kill a short pipeline at random moments, run the same command again until it finishes, compare with a run never
killed: the weights must be identical and the manifest's final figures equal.

Two stages (text pre-training and the ViT stage, 6 steps each, a checkpoint every 2) run into ``FOLDER/ref`` once,
then ``TRIALS`` times into ``FOLDER/t<N>``: each attempt is SIGKILLed (its whole process group) after a random
3-70 s, up to 6 times, then left to finish; odd trials put ``$TMPDIR`` on ``/dev/shm`` (another filesystem).

Usage::

    python benchmarks/kill_probe.py /tmp/kill_probe 10
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mm_lightning.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHORT = {
    "trainer.max_steps": 6, "trainer.val_check_interval": 2, "trainer.limit_val_batches": 2,
    "trainer.callbacks.StageCheckpoint.init_args.every_n_train_steps": 2, "data.init_args.num_workers": 0,
}  # fmt: skip


def write_pipeline(folder: Path) -> Path:
    vit = {
        "model.init_args.schedule.total_steps": 6,
        "model.init_args.schedule.warmup_steps": 1,
        "model.init_args.schedule.decay_steps": 1,
        "trainer.callbacks.EmojiIdentityProbe.init_args.backgrounds": 1,
    }
    spec = {"name": "kill_probe", "run_dir": str(folder / "run"), "stages": [
        {"name": "text", "config": str(ROOT / "configs/text_pretrain/tiny.yaml"), "metric": "val/ppl",
         "overrides": SHORT | {"trainer.callbacks.PasskeyEvaluation.init_args.prompts": 2}},
        {"name": "vit", "config": str(ROOT / "configs/vit_coca/tiny.yaml"), "overrides": SHORT | vit},
    ]}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    return folder / "pipeline.yaml"


def start(pipeline: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "mm_lightning.cli", "pipeline", "--config", str(pipeline)]
    return subprocess.Popen(command, cwd=pipeline.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def results(run_dir: Path) -> tuple[list[dict], dict[str, dict]]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return stages, {entry["name"]: load_checkpoint(entry["checkpoint"])["state_dict"] for entry in stages}


def main() -> None:
    folder, trials = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10
    reference = folder / "ref"
    if not (reference / "run" / "manifest.json").exists():
        start(write_pipeline(reference), dict(os.environ)).wait()
    ref_stages, ref_weights = results(reference / "run")
    rng = random.Random(0)
    for trial in range(trials):
        shutil.rmtree(folder / f"t{trial}", ignore_errors=True)
        pipeline = write_pipeline(folder / f"t{trial}")
        env = dict(os.environ) | ({"TMPDIR": "/dev/shm"} if trial % 2 else {})
        kills = []
        for _ in range(6):
            process, moment = start(pipeline, env), rng.uniform(3, 70)
            try:
                process.wait(timeout=moment)
                break
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kills.append(round(moment, 1))
        else:
            process = start(pipeline, env)
            process.wait()
        if process.returncode != 0:
            error = process.stderr.read()[-400:]
            print(f"trial {trial}, killed at {kills} s: FAILED, exit {process.returncode}: {error}", flush=True)
            continue
        stages, weights = results(folder / f"t{trial}" / "run")
        same = all(torch.equal(weights[s][k], v) for s in ref_weights for k, v in ref_weights[s].items()
                   if isinstance(v, torch.Tensor))  # fmt: skip
        figures = all(a["final_metrics"] == b["final_metrics"] for a, b in zip(stages, ref_stages, strict=True))
        print(f"trial {trial}, killed at {kills} s: finished; weights identical {same}, figures identical {figures}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
