"""bf16 autocast against fp32 on the CPU for a demo stage: step time and loss curve, trained in lockstep.

Three copies of the demo pipeline's stage (``text``: stage 1, ``vit``: stage 2a; its stage configs, the pipeline's
steps, the stage's own optimizer, LR schedule and gradient clipping at 1.0) train on the same batches of the real
demo data, one step of each per round: ``fp32`` (seed ``--seed``), ``bf16`` (the same initial weights, every step
under ``torch.autocast("cpu", torch.bfloat16)``, as Lightning's ``bf16-mixed`` runs it) and ``fp32_seed2`` (fp32,
initial weights from ``--seed + 1``): the fp32 pair's gap is the noise a bf16 gap is compared with. The order of the
three rotates every round so that drift in the machine's load hits them evenly. Every ``--val-every`` steps each copy
is evaluated on the stage's validation batches (its own precision): ``text`` the next-token loss, ``vit`` the caption
loss and the contrastive loss.

The report gives each copy's median step and 10-90% range, the per-round time ratio fp32 / bf16 (> 1: bf16 is
faster), and the loss gaps: mean absolute gap of the 10-step moving averages of the training loss over the second
half, and the largest validation gap after step 0, bf16 against fp32 and the second fp32 seed against fp32.

    python benchmarks/bf16_cpu.py --stage text --threads 1 --out bf16_text.json --plot bf16_text.png
    python benchmarks/bf16_cpu.py --stage vit --threads 1 --out bf16_vit.json --plot bf16_vit.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch
import yaml
from bench_common import DEMO_PIPELINE, build_datamodule, build_stage, demo_stages, machine_info, merge, print_table

from mm_lightning.optim import build_optimizer
from mm_lightning.precision import native_cpu_bf16
from mm_lightning.schedules import build_lr_scheduler, fit_table_to_stage

VARIANTS = ("fp32", "bf16", "fp32_seed2")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["text", "vit"], default="text", help="the demo pipeline's stage")
    parser.add_argument("--steps", type=int, help="training steps (default: the demo pipeline's)")
    parser.add_argument("--val-every", type=int, help="steps between evaluations (default: the pipeline's)")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches per evaluation")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="draw the loss curves into this PNG")
    return parser.parse_args()


def stage_config(name: str) -> tuple[dict[str, Any], int, int]:
    """The stage's config with the demo pipeline's overrides that matter here, its steps and validation interval."""
    spec = yaml.safe_load(DEMO_PIPELINE.read_text())
    overrides = next(stage for stage in spec["stages"] if stage["name"] == name)["overrides"]
    config = demo_stages()[name]
    schedule = {key.rpartition(".")[2]: value for key, value in overrides.items() if ".schedule." in key}
    config = merge(config, {"model": {"init_args": {"schedule": schedule}}})
    return config, overrides["trainer.max_steps"], overrides["trainer.val_check_interval"]


def load_batches(config: dict[str, Any], train: int, val: int) -> tuple[list[Any], list[Any]]:
    """``train`` training batches (the loader cycled) and ``val`` validation batches of the stage's datamodule."""
    data = build_datamodule(config, num_workers=0)
    data.setup("fit")
    batches: list[Any] = []
    while len(batches) < train:
        batches.extend(batch for _, batch in zip(range(train - len(batches)), data.train_dataloader()))
    return batches, [batch for _, batch in zip(range(val), data.val_dataloader())]


def stage_losses(stage: Any, name: str, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    if name == "text":
        return stage.next_token_loss(batch)
    return stage.coca_loss(batch)[1]  # as ViTCoCaStage.training_step (the caption term chunked)


class Copy:
    """One training copy of the stage: its module, optimizer, LR schedule and precision."""

    def __init__(self, config: dict[str, Any], name: str, steps: int, seed: int, bf16: bool) -> None:
        torch.manual_seed(seed)
        self.stage, self.name, self.bf16 = build_stage(config), name, bf16
        table = fit_table_to_stage(self.stage.schedule_table, 0, steps)
        self.optimizer = build_optimizer(self.stage, self.stage.optimizer_config, lr=table[0].peak_lr)
        self.scheduler = build_lr_scheduler(self.optimizer, table, step_offset=0)
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self.val: list[dict[str, float]] = []

    def autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, batch: dict[str, Any]) -> None:
        start = time.perf_counter()
        with self.autocast():
            loss = stage_losses(self.stage, self.name, batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.stage.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.seconds.append(time.perf_counter() - start)
        self.losses.append(loss.item())

    @torch.no_grad()
    def evaluate(self, step: int, batches: list[Any]) -> None:
        self.stage.eval()
        with self.autocast():
            terms = [stage_losses(self.stage, self.name, batch) for batch in batches]
        self.stage.train()
        keys = [key for key in terms[0] if key != "loss"] or ["loss"]
        self.val.append({"step": step, **{key: statistics.fmean(t[key].item() for t in terms) for key in keys}})


def smoothed(values: list[float], window: int = 10) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def gaps(copies: dict[str, Copy], other: str) -> dict[str, float]:
    """``other`` against ``fp32``: training-loss gap (second half, smoothed) and largest validation gap."""
    a, b = smoothed(copies["fp32"].losses), smoothed(copies[other].losses)
    half = len(a) // 2
    pairs = zip(copies["fp32"].val[1:], copies[other].val[1:])  # after training starts (seeds differ at step 0)
    val = [abs(x[k] - y[k]) for x, y in pairs for k in x if k != "step"]
    return {"train_mean_abs": statistics.fmean(abs(x - y) for x, y in zip(a[half:], b[half:])), "val_max_abs": max(val)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config, steps, val_every = stage_config(args.stage)
    steps, val_every = args.steps or steps, args.val_every or val_every
    train, val = load_batches(config, steps, args.val_batches)
    seeds = {"fp32": args.seed, "bf16": args.seed, "fp32_seed2": args.seed + 1}
    copies = {v: Copy(config, args.stage, steps, seeds[v], bf16=v == "bf16") for v in VARIANTS}
    for copy in copies.values():
        copy.evaluate(0, val)
    for index, batch in enumerate(train):
        shift = index % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            copies[name].step(batch)
        if (index + 1) % val_every == 0 or index + 1 == steps:
            for copy in copies.values():
                copy.evaluate(index + 1, val)
    report = summarise(args, copies, steps)
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, args.plot)


def summarise(args: argparse.Namespace, copies: dict[str, Copy], steps: int) -> dict[str, Any]:
    timed = {name: copy.seconds[2:] for name, copy in copies.items()}  # two warm-up steps
    ratios = [f / b for f, b in zip(timed["fp32"], timed["bf16"])]
    deciles = {name: statistics.quantiles(s, n=10) for name, s in timed.items()}
    return {
        "stage": args.stage, "steps": steps, "threads": args.threads, "seed": args.seed,
        "machine": machine_info(), "native_bf16": native_cpu_bf16(),
        "median_step_s": {name: statistics.median(s) for name, s in timed.items()},
        "step_s_p10_p90": {name: [d[0], d[-1]] for name, d in deciles.items()},
        "fp32_over_bf16_median_round": statistics.median(ratios),
        "fp32_over_bf16_p10_p90": [statistics.quantiles(ratios, n=10)[0], statistics.quantiles(ratios, n=10)[-1]],
        "gap_bf16_vs_fp32": gaps(copies, "bf16"), "gap_seed_vs_fp32": gaps(copies, "fp32_seed2"),
        "train_loss": {name: copy.losses for name, copy in copies.items()},
        "val": {name: copy.val for name, copy in copies.items()},
    }  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['machine']}; native bf16: {report['native_bf16']}; stage {report['stage']}, {report['steps']} "
          f"steps, {report['threads']} thread(s)")  # fmt: skip
    rows = []
    for name in VARIANTS:
        low, high = report["step_s_p10_p90"][name]
        last = report["val"][name][-1]
        val = "  ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "step")
        rows.append([name, f"{report['median_step_s'][name]:.3f}", f"{low:.3f}-{high:.3f}",
                     f"{statistics.fmean(report['train_loss'][name][-10:]):.3f}", val])  # fmt: skip
    print_table(["copy", "median step s", "p10-p90", "train loss (last 10)", "final validation"], rows)
    low, high = report["fp32_over_bf16_p10_p90"]
    print(f"fp32 / bf16 step time, per round: median {report['fp32_over_bf16_median_round']:.2f} "
          f"(p10-p90 {low:.2f}-{high:.2f}; > 1: bf16 faster)")  # fmt: skip
    for key, label in (("gap_bf16_vs_fp32", "bf16 vs fp32"), ("gap_seed_vs_fp32", "fp32 seed+1 vs fp32 (noise)")):
        gap = report[key]
        print(f"{label}: train loss gap {gap['train_mean_abs']:.4f} (smoothed, 2nd half), "
              f"largest validation gap {gap['val_max_abs']:.4f}")  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in zip(VARIANTS, ("-", "--", ":")):
        losses = report["train_loss"][name]
        ax.plot(range(1, len(losses) + 1), smoothed(losses), style, label=f"{name} (train, 10-step mean)")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="training loss", title=f"demo stage '{report['stage']}': bf16 autocast vs fp32, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
