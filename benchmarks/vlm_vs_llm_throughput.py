"""Training tokens/s and MFU of the LLM step against the VLM step at equal tokens, per attention mode, in one run.

*Equal tokens*: both steps feed the same number of LLM positions, ``R`` rows of ``L`` (``--rows``, ``--seq-len``),
through the same LLM preset, and tokens/s counts those positions for both. The LLM step is the real
``TextPretrainStage`` on rows of demo text (``demo:sotu-captions`` blocks, one full row each). The VLM step is the
real ``JointStage`` (registry presets in place of its input checkpoints, ``bench_common.preset_stage``) on rows of
demo emoji scenes, each an image span (``<|image_start|>``, the image's merged tokens, ``<|image_end|>``) then its
caption, as the joint stages' ``image_text`` source gives them, packed by the mixture's ``pack_samples``; the gap a
row's last scene leaves is filled with the head of a text block, so no position is padding. ``--multimodal-rows``
sets the share of rows built that way (the rest are text rows). Its images are natively packed (their own
resolution, one patch sequence) and go through the ViT and the projector as ``JointStage`` does it: so the VLM step
does the LLM step's work plus the vision tower's, and its loss skips the image positions.

Both train under a real Lightning ``Trainer`` on the same number of distinct batches, built once. Each mode first
runs every batch once untimed (compiles, allocator), then rounds alternate the two stages (LLM first, then VLM first,
...); each fit's first step is warm-up and the rest are timed from one ``on_train_batch_end`` to the next. MFU =
model FLOP/s (``LLM.flops_per_token`` for the LLM step; ``vlm_step_flops`` for the VLM step: LLM, ViT patches and
projector; the stages' own counts) / the best matmul FLOP/s measured in the same run, before and after
(``bench_common.matmul_gflops``). Those counts send every position through the output layer; the chunked loss skips
positions without a target (the VLM's image tokens), so ``executed`` FLOPs (and ``executed MFU``) leave them out.

Modes: ``sdpa`` (eager, the attention interface's SDPA path), ``compiled`` (the stages' ``compile: true``: each
block through ``torch.compile``, ``mm_lightning.parallel.apply_compile``), ``xformers`` (every backbone's
``attn_backend: xformers``; CUDA only, skipped with the reason where its kernels do not load).

Target (issue 16): the VLM step at least 85% of the LLM step's tokens/s. ``vision share`` (the ViT + projector's
forward and backward alone, timed outside the Trainer on the same batches, over the VLM's median step) says where a
shortfall goes.

Usage::

    python benchmarks/vlm_vs_llm_throughput.py --threads 1 --out vlm_vs_llm.json
    python benchmarks/vlm_vs_llm_throughput.py --device cuda --precision bf16-mixed --modes sdpa compiled xformers
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from bench_common import fit_step_times, machine_info, matmul_gflops, preset_stage, print_table

from mm_lightning.data.mixture.packing import expand_sample, pack_samples
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.media.interleave import MixSample
from mm_lightning.models.flops import vlm_step_flops
from mm_lightning.ops.attention import xformers_available, xformers_probe_error
from mm_lightning.stages import JointStage, TextPretrainStage
from mm_lightning.tokenizer import IMAGE_ID

TARGET = 0.85
MODES = ("sdpa", "compiled", "xformers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM, ViT and projector preset")
    parser.add_argument("--rows", type=int, default=8, help="rows per step R")
    parser.add_argument("--seq-len", type=int, default=256, help="positions per row L")
    parser.add_argument("--multimodal-rows", type=float, default=1.0, help="share of the VLM's rows holding scenes")
    parser.add_argument("--max-patches", type=int, default=100, help="patches per image at most (the demo's 100)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches per stage (one fit runs them all)")
    parser.add_argument("--rounds", type=int, default=3, help="timed fits of each stage")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="32-true", help="Lightning precision (bf16-mixed on a GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.batches < 2:
        parser.error("--batches must be at least 2 (a fit's first step is warm-up)")
    return args


# -- batches ---------------------------------------------------------------------------------------------------------


def demo_sources(seq_len: int, max_patches: int) -> tuple[Any, Any]:
    """The text (``demo:sotu-captions``, ``seq_len + 1`` tokens a block) and scene sources of the joint stages."""
    data = MixtureDataModule([{"name": "text", "kind": "text", "path": "demo:sotu-captions"},
                              {"name": "scenes", "kind": "image_text", "path": "demo:emoji-scenes"}],
                             seq_len=seq_len, max_patches=max_patches)  # fmt: skip
    data.prepare_data()
    text, scenes = data.sources("train")
    return text, scenes


class RowBuilder:
    """Full rows of demo text or of demo scenes topped up with text, reading each source in order."""

    def __init__(self, text: Any, scenes: Any, seq_len: int, merge_factor: int = 2) -> None:
        self.text, self.scenes, self.seq_len, self.merge_factor = text, scenes, seq_len, merge_factor
        self.next_text, self.next_scene = 0, 0

    def text_row(self, positions: int | None = None) -> MixSample:
        """The next text block, cut to ``positions`` positions (default: a whole row)."""
        sample = self.text.sample(self.next_text)
        self.next_text += 1
        keep = (positions or self.seq_len) + 1
        return MixSample(sample.token_ids[:keep], source=sample.source)

    def scene_row(self) -> list[MixSample]:
        """Scenes while they fit in one row, then the head of a text block in the gap."""
        samples, room = [], self.seq_len
        while True:
            scene = self.scenes.sample(self.next_scene)
            length = len(expand_sample(scene, self.merge_factor)[0]) - 1
            if length > room:
                break
            samples.append(scene)
            self.next_scene, room = self.next_scene + 1, room - length
        return samples + ([self.text_row(room)] if room else [])

    def batch(self, rows: int, multimodal_rows: int) -> dict[str, Any]:
        """``rows`` full rows, the first ``multimodal_rows`` of them with scenes."""
        samples = [s for r in range(rows) for s in (self.scene_row() if r < multimodal_rows else [self.text_row()])]
        packed = pack_samples(samples, self.seq_len, self.merge_factor)
        if packed["input_ids"].shape[0] != rows or int(packed["sample_tokens"].sum()) != rows * self.seq_len:
            raise RuntimeError(f"expected {rows} full rows, got {tuple(packed['input_ids'].shape)}")
        return packed


# -- stages and timing -----------------------------------------------------------------------------------------------


def build_stages(preset: str, mode: str) -> dict[str, Any]:
    """The LLM and VLM stages of a mode, one LLM config for both."""
    compile = mode == "compiled"
    stages = {"llm": TextPretrainStage(llm=preset, compile=compile),
              "vlm": preset_stage(JointStage)(preset, preset, handoff="weights_only", compile=compile)}  # fmt: skip
    if mode == "xformers":
        for stage in stages.values():
            for module in stage.backbones().values():
                if hasattr(module.config, "attn_backend"):
                    module.config.attn_backend = "xformers"
    return stages


def step_flops(stage: Any, batch: dict[str, Any]) -> tuple[float, float]:
    """Model FLOPs of one training step of ``stage`` on ``batch``: as the stage counts them (every position through
    the output layer), and as executed (the chunked loss never sends a position without a target to the head)."""
    tokens, seq_len = batch["input_ids"].numel(), batch["input_ids"].shape[1]
    if isinstance(stage, JointStage):
        counted = vlm_step_flops(stage.llm, stage.vit, stage.projector, tokens, seq_len, batch["grid_hw"])
    else:
        counted = stage.llm.flops_per_token(seq_len) * tokens
    head_per_token = 6 * stage.llm.config.d_model * stage.llm.config.vocab_size  # forward and backward
    return counted, counted - head_per_token * int((batch["labels"] < 0).sum())


def vision_seconds(stage: Any, batches: list[dict[str, Any]], device: str) -> float:
    """Median time of the ViT + projector's forward and backward alone over ``batches`` (after one untimed pass:
    outside the Trainer a compiled block may compile again)."""
    times = []
    for batch in batches[:1] + batches:
        images = [batch[key].to(device) for key in ("patches", "grid_hw", "patch_seq_ids")]
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stage.vlm.image_tokens(*images).float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    stage.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def measure_mode(mode: str, batches: dict[str, list], args: argparse.Namespace) -> dict[str, Any]:
    """Alternating timed fits of the LLM and VLM stages of one mode."""
    stages = build_stages(args.preset, mode)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    fit = {name: (lambda n=name: fit_step_times(stages[n], batches[n], 1, accelerator, args.precision))
           for name in stages}  # fmt: skip
    for name in stages:
        fit[name]()  # untimed: compiles every shape, warms the allocator
    times: dict[str, list[float]] = {name: [] for name in stages}
    per_round = []
    for round_ in range(args.rounds):
        medians = {}
        for name in ("llm", "vlm") if round_ % 2 == 0 else ("vlm", "llm"):
            steps = fit[name]()
            times[name] += steps
            medians[name] = statistics.median(steps)
        per_round.append(medians["llm"] / medians["vlm"])
    tokens = args.rows * args.seq_len
    result: dict[str, Any] = {"mode": mode, "step_times_s": times}
    for name, stage in stages.items():
        step = statistics.median(times[name])
        flops, executed = (statistics.mean(f) for f in zip(*(step_flops(stage, b) for b in batches[name])))
        result[name] = {"median_step_s": step, "tokens_per_s": tokens / step, "flops_per_step": flops,
                        "executed_flops_per_step": executed, "model_gflops": flops / step / 1e9,
                        "executed_gflops": executed / step / 1e9}  # fmt: skip
    result["vlm"]["vision_s"] = vision_seconds(stages["vlm"], batches["vlm"], args.device)
    result["vlm"]["vision_share"] = result["vlm"]["vision_s"] / result["vlm"]["median_step_s"]
    result["ratio"] = result["vlm"]["tokens_per_s"] / result["llm"]["tokens_per_s"]
    result["ratio_per_round_median"] = statistics.median(per_round)
    result["holds"] = result["ratio"] >= TARGET
    return result


def skip_reason(mode: str, device: str) -> str | None:
    """Why ``mode`` cannot run here (``None``: it can)."""
    if mode != "xformers":
        return None
    if device != "cuda":
        return "xformers has no CPU kernels (CUDA only)"
    return None if xformers_available() else f"xformers kernels do not load: {xformers_probe_error('cuda')}"


def batch_shape(batches: list[dict[str, Any]]) -> dict[str, float]:
    """Image tokens, patches and images per VLM step, and the image tokens' share of the positions."""
    image_tokens = statistics.mean(int((b["input_ids"] == IMAGE_ID).sum()) for b in batches)
    positions = batches[0]["input_ids"].numel()
    return {"image_tokens": image_tokens, "image_token_share": image_tokens / positions,
            "patches": statistics.mean(int(b["patches"].shape[1]) for b in batches),
            "images": statistics.mean(int(b["grid_hw"].shape[0]) for b in batches),
            "text_targets": statistics.mean(int((b["labels"] >= 0).sum()) for b in batches)}  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
    before = matmul_gflops(args.matmul_sizes, 5, args.device, dtype)
    builder = RowBuilder(*demo_sources(args.seq_len, args.max_patches), args.seq_len)
    multimodal = round(args.multimodal_rows * args.rows)
    batches = {"llm": [builder.batch(args.rows, 0) for _ in range(args.batches)],
               "vlm": [builder.batch(args.rows, multimodal) for _ in range(args.batches)]}  # fmt: skip
    results, skipped = [], {}
    for mode in args.modes:
        reason = skip_reason(mode, args.device)
        if reason:
            skipped[mode] = reason
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(total_steps|warmup|LRSchedulerResume).*")
            results.append(measure_mode(mode, batches, args))
    after = matmul_gflops(args.matmul_sizes, 5, args.device, dtype)
    peak = max(max(before.values()), max(after.values()))
    for result in results:
        for name in ("llm", "vlm"):
            result[name]["mfu"] = result[name]["model_gflops"] / peak
            result[name]["executed_mfu"] = result[name]["executed_gflops"] / peak
    report = {"machine": machine_info(args.device), "command": " ".join(sys.argv), "preset": args.preset,
              "rows": args.rows, "seq_len": args.seq_len, "precision": args.precision,
              "tokens_per_step": args.rows * args.seq_len, "multimodal_rows": multimodal,
              "vlm_batch": batch_shape(batches["vlm"]), "peak_matmul_gflops": peak,
              "matmul_gflops": {"before": before, "after": after}, "modes": results, "skipped": skipped,
              "target": TARGET}  # fmt: skip
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


def print_report(report: dict[str, Any]) -> None:
    shape = report["vlm_batch"]
    print(f"\nLLM step vs VLM step at equal tokens: {report['rows']} rows x {report['seq_len']} = "
          f"{report['tokens_per_step']} LLM positions a step, {report['preset']} presets, {report['precision']}; "
          f"VLM rows: {report['multimodal_rows']} of {report['rows']} with scenes, {shape['image_token_share']:.0%} "
          f"of positions image tokens ({shape['images']:.0f} images, {shape['patches']:.0f} patches a step); "
          f"peak matmul {report['peak_matmul_gflops']:.0f} GFLOP/s")  # fmt: skip
    rows = []
    for r in report["modes"]:
        for name in ("llm", "vlm"):
            side = r[name]
            vision = f"{side['vision_share']:.0%}" if "vision_share" in side else ""
            ratio = f"{r['ratio']:.2f} (rounds {r['ratio_per_round_median']:.2f})" if name == "vlm" else ""
            rows.append((r["mode"], name, f"{side['median_step_s'] * 1e3:.0f}", f"{side['tokens_per_s']:.0f}",
                         f"{side['flops_per_step'] / 1e9:.1f}", f"{side['executed_flops_per_step'] / 1e9:.1f}",
                         f"{side['mfu']:.1%}", f"{side['executed_mfu']:.1%}", vision, ratio))  # fmt: skip
    print_table(["mode", "step", "median ms", "tokens/s", "GFLOP/step", "executed", "MFU", "executed MFU",
                 "vision share", "VLM/LLM"], rows)  # fmt: skip
    for mode, reason in report["skipped"].items():
        print(f"{mode}: skipped, {reason}")
    for r in report["modes"]:
        print(
            f"{r['mode']}: VLM/LLM tokens/s {r['ratio']:.2f}, target >= {TARGET}: {'holds' if r['holds'] else 'FAILS'}"
        )


if __name__ == "__main__":
    main()
