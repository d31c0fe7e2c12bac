"""One prepared run on a lent GPU for issue 16: bf16 training speed and MFU of the 1b LLM and the VLM with compile
off and on, the 128K-token long-context row's memory and tokens/s, Muon against AdamW; JSON and a table.

Sections (``--dry-run`` lists them with their time budgets; ``--sections`` picks some):

* ``matmul``: the GPU's practical bf16 peak (median of 8192^3 and 4096^3 products), the MFU denominator.
* ``llm``, ``llm-compiled``: ``TextPretrainStage`` (``llm/1b``) under a Lightning ``Trainer``, bf16-mixed, FSDP2 on a
  one-GPU mesh (``ModelParallelStrategy``), packed rows of ``--seq-len`` tokens (documents of mean ``--mean-doc``),
  eager and with the stage's ``compile`` switch (each block compiled): tokens/s, model TFLOP/s (PaLM's count,
  ``LLM.flops_per_token``), MFU against ``matmul``, peak memory.
* ``vlm``, ``vlm-compiled``: the same for ``JointStage`` with the ``1b`` LLM and the ``so400m`` ViT and projector
  (random weights), on rows of the same shape holding natively packed random images (14-pixel patches, 224-504
  pixels a side) with their captions, the last gap filled with text: tokens/s counts LLM positions, FLOPs are
  ``vlm_step_flops`` (LLM, ViT and projector).
* ``long-128k``: one row of ``configs/joint_long_context/1b_fsdp2_128k.yaml``'s shape (its sequence length, RoPE base,
  activation checkpointing, chunked loss and compile switch, FSDP2 on one GPU), one document a row: peak memory and
  tokens/s.
* ``muon-vs-adamw``: ``benchmarks/muon_fsdp2.py`` with ``llm/1b`` on one GPU (FSDP2 over a one-GPU mesh): median step
  and optimizer step of each, alternating.
* Not run unless named: ``attention-numerics`` (xformers and SDPA on packed rows against float64),
  ``attention-speed`` (their forward + backward time), ``vlm-numerics`` (packed == alone, KV cache == none).

Each section runs in its own process under its time budget: one that fails or overruns is reported (with the end of
its traceback) and the next one runs; the whole run stops starting sections at ``--budget`` seconds. The results
are written to ``--out`` after every section.

Usage::

    python benchmarks/gpu_check.py --dry-run                       # the plan, no GPU needed
    python benchmarks/gpu_check.py --out gpu_check.json            # everything above, about 11 minutes on an H200
    python benchmarks/gpu_check.py --sections matmul llm --out gpu_llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mm_lightning.ops.attention import attention, resolve_backend, xformers_available
from mm_lightning.ops.patches import pack_patches

ROOT = Path(__file__).resolve().parent.parent
LONG_CONFIG = ROOT / "configs" / "joint_long_context" / "1b_fsdp2_128k.yaml"


@dataclass(frozen=True)
class Section:
    """A part of the run: its time budget and what it measures."""

    budget_s: int
    what: str


SECTIONS = {
    "matmul": Section(25, "bf16 matmul peak (the MFU denominator)"),
    "llm": Section(75, "llm/1b, bf16-mixed, FSDP2 on 1 GPU, eager: tokens/s, MFU"),
    "llm-compiled": Section(115, "llm/1b as above, each block compiled"),
    "vlm": Section(80, "VLM (llm/1b + vit/so400m), bf16-mixed, eager: tokens/s, MFU"),
    "vlm-compiled": Section(125, "VLM as above, each block compiled"),
    "long-128k": Section(150, "one 128K-token row, 1b_fsdp2_128k.yaml's shape: peak memory, tokens/s"),
    "muon-vs-adamw": Section(90, "Muon vs AdamW step time, llm/1b, FSDP2 on 1 GPU"),
    "attention-numerics": Section(30, "attention backends on packed rows against float64"),
    "attention-speed": Section(30, "attention forward + backward time, packed rows"),
    "vlm-numerics": Section(30, "tiny VLM: packed == alone, KV cache == none"),
}
DEFAULT_SECTIONS = ("matmul", "llm", "llm-compiled", "vlm", "vlm-compiled", "long-128k", "muon-vs-adamw")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file for the results (written after every section)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(DEFAULT_SECTIONS))
    parser.add_argument("--budget", type=float, default=690.0, help="seconds: no section starts that would end later")
    parser.add_argument("--dry-run", action="store_true", help="list the sections and their budgets, run nothing")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens a row (llm, vlm)")
    parser.add_argument("--batch", type=int, default=4, help="rows a step (llm, vlm)")
    parser.add_argument("--mean-doc", type=int, default=1024, help="mean document length of the llm rows")
    parser.add_argument("--steps", type=int, default=8, help="measured training steps (llm, vlm)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (llm, vlm)")
    parser.add_argument("--long-steps", type=int, default=2, help="measured steps of the 128K row (after one warm-up)")
    parser.add_argument("--llm", default="1b", help="LLM preset")
    parser.add_argument("--vision", default="so400m", help="ViT and projector preset of the VLM")
    parser.add_argument("--long-seq-len", type=int, help="tokens of the long row (default: the 128K config's)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run of the plumbing")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run this one section in this process
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # internal: where that section writes its result
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, Section]]:
    """The sections to run, in order, with their budgets."""
    return [(name, SECTIONS[name]) for name in args.sections]


def print_plan(args: argparse.Namespace) -> None:
    rows = plan(args)
    for name, section in rows:
        print(f"{name:20s} {section.budget_s:4d} s  {section.what}")
    total = sum(section.budget_s for _, section in rows)
    print(f"{'total':20s} {total:4d} s  (the run starts no section past --budget {args.budget:.0f} s)")


# -- running sections, each in its own process -----------------------------------------------------------------------


def run_in_subprocess(name: str, timeout: float, argv: list[str]) -> dict[str, Any]:
    """Run section ``name`` in a fresh Python process (killed with its children after ``timeout`` seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        part = Path(folder) / "part.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--section", name, "--part", str(part)]
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            raise TimeoutError(f"over its {timeout:.0f} s budget; last output: {output[-400:]}") from None
        if process.returncode != 0 or not part.exists():
            raise RuntimeError(f"exit code {process.returncode}; last output: {output[-1200:]}")
        return json.loads(part.read_text())


def run_sections(
    sections: list[tuple[str, Section]], run: Callable[[str, float], dict[str, Any]], budget: float,
    save: Callable[[dict[str, Any]], None] = lambda results: None,
) -> dict[str, Any]:  # fmt: skip
    """Each section through ``run(name, timeout)``: its result, or its error, or why it was skipped; never raises."""
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for name, section in sections:
        elapsed = time.perf_counter() - start
        if elapsed + section.budget_s > budget:
            results[name] = {"status": "skipped", "error": f"{elapsed:.0f} s used of the run's {budget:.0f} s"}
            continue
        began = time.perf_counter()
        try:
            results[name] = {"status": "ok", **run(name, section.budget_s)}
        except Exception as error:
            results[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[-1500:]}
        results[name]["seconds"] = time.perf_counter() - began
        print(f"[{name}] {results[name]['status']} in {results[name]['seconds']:.0f} s", flush=True)
        save(results)
    return results


# -- training sections -----------------------------------------------------------------------------------------------


class StepClock:
    """Lightning callback: the wall clock after each training step (CUDA synchronised) and the step's loss."""

    def __new__(cls):  # built lazily: importing Lightning is the sections' business, not the planner's
        import lightning.pytorch as pl

        class _StepClock(pl.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []
                self.losses: list[float] = []

            def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
                if torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                self.ends.append(time.perf_counter())
                self.losses.append(float(outputs["loss"]))

        return _StepClock()


def fit_timed(stage: Any, loader: Any, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Train ``stage`` for ``warmup + steps`` steps on one device under FSDP2, bf16-mixed; the measured steps' median
    step time, peak memory (CUDA) and first and last loss."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy

    clock = StepClock()
    trainer = pl.Trainer(
        accelerator=device, devices=1, precision="bf16-mixed", max_steps=warmup + steps, gradient_clip_val=1.0,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), callbacks=[clock],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|total_steps|warmup).*")
        trainer.fit(stage, train_dataloaders=loader)
    ends = clock.ends[warmup - 1 :]
    step_s = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"median_step_s": step_s, "peak_mem_gib": peak,
            "first_loss": clock.losses[0], "last_loss": clock.losses[-1], "measured_steps": len(ends) - 1}  # fmt: skip


def batch_loader(batches: list[dict[str, Any]]) -> Any:
    """A loader over prepared batches, one step each."""
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)


def section_llm(args: argparse.Namespace, compile: bool) -> dict[str, Any]:
    from mm_lightning.data.synthetic import SyntheticTextDataModule
    from mm_lightning.stages import TextPretrainStage

    stage = TextPretrainStage(llm=args.llm, compile=compile)
    data = SyntheticTextDataModule(
        vocab_size=stage.llm.config.vocab_size,
        seq_len=args.seq_len,
        batch_size=args.batch,
        num_rows=(args.steps + args.warmup) * args.batch,
        mean_doc_len=args.mean_doc,
    )
    timed = fit_timed(stage, data.train_dataloader(), args.steps, args.warmup, args.device)
    tokens = args.seq_len * args.batch
    flops = stage.llm.flops_per_token(args.seq_len) * tokens
    return {
        **timed,
        "compile": compile,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "mean_doc": args.mean_doc,
        "params": stage.llm.num_params(),
        "attention": resolve_backend("auto", torch.device(args.device)),
        "tokens_per_s": tokens / timed["median_step_s"],
        "model_tflops": flops / timed["median_step_s"] / 1e12,
    }


def vlm_rows(rows: int, seq_len: int, vit_config: Any, merge: int, seed: int, vocab: int = 32_000) -> dict[str, Any]:
    """A packed VLM batch of ``rows`` full rows: random images each with a caption, while they fit, then text in
    the last gap; as the joint stages' image-text source gives them. Images keep a native size: 16-36 patches a
    side (224-504 pixels at patch 14), even, at most the ViT's ``max_patches``."""
    from mm_lightning.data.mixture.packing import expand_sample, pack_samples
    from mm_lightning.media.interleave import MixSample
    from mm_lightning.tokenizer import EOD_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID

    rng = random.Random(seed)
    samples = []
    for _ in range(rows):
        room = seq_len
        while True:
            h, w = image_grid(rng, vit_config.max_patches, merge)
            caption = [rng.randrange(8, vocab) for _ in range(rng.randint(24, 96))]
            patches = torch.randn(h * w, 3 * vit_config.patch_size**2)
            scene = MixSample([IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID, *caption, EOD_ID], [(patches, (h, w))])
            length = len(expand_sample(scene, merge)[0]) - 1
            if length > room:
                break
            samples.append(scene)
            room -= length
        if room:
            samples.append(MixSample([rng.randrange(8, vocab) for _ in range(room + 1)]))
    packed = pack_samples(samples, seq_len, merge)
    if packed["input_ids"].shape[0] != rows or int(packed["sample_tokens"].sum()) != rows * seq_len:
        raise RuntimeError(f"expected {rows} full rows, got {tuple(packed['input_ids'].shape)}")
    return packed


def image_grid(rng: random.Random, max_patches: int, merge: int, low: int = 16, high: int = 36) -> tuple[int, int]:
    """A random ``(h, w)`` patch grid: sides multiples of ``merge`` in ``[low, high]`` (smaller where ``max_patches``
    allows no ``low x low``), ``h * w <= max_patches``."""
    low = min(low, int(max_patches**0.5)) // merge * merge
    while True:
        h, w = (merge * rng.randint(low // merge, high // merge) for _ in range(2))
        if h * w <= max_patches:
            return h, w


def section_vlm(args: argparse.Namespace, compile: bool) -> dict[str, Any]:
    from bench_common import preset_stage

    from mm_lightning.models.flops import vlm_step_flops
    from mm_lightning.stages import JointStage
    from mm_lightning.tokenizer import IMAGE_ID

    stage = preset_stage(JointStage)(args.llm, args.vision, handoff="weights_only", compile=compile)
    merge = stage.projector.config.shuffle_factor
    batches = [vlm_rows(args.batch, args.seq_len, stage.vit.config, merge, seed, stage.llm.config.vocab_size)
               for seed in range(args.steps + args.warmup)]  # fmt: skip
    timed = fit_timed(stage, batch_loader(batches), args.steps, args.warmup, args.device)
    tokens = args.seq_len * args.batch
    flops = statistics.fmean(vlm_step_flops(stage.llm, stage.vit, stage.projector, tokens, args.seq_len, b["grid_hw"])
                             for b in batches)  # fmt: skip
    image_tokens = statistics.fmean(int((b["input_ids"] == IMAGE_ID).sum()) for b in batches)
    return {**timed, "compile": compile, "seq_len": args.seq_len, "batch": args.batch,
            "images_per_step": statistics.fmean(int(b["grid_hw"].shape[0]) for b in batches),
            "image_token_share": image_tokens / tokens, "tokens_per_s": tokens / timed["median_step_s"],
            "model_tflops": flops / timed["median_step_s"] / 1e12}  # fmt: skip


def long_context_shape(path: Path = LONG_CONFIG) -> dict[str, Any]:
    """The 128K row's shape from the stage config: sequence length and RoPE base (``RoPEBaseSwitch``), activation
    checkpointing, the loss's chunk size and the compile switch."""
    config = yaml.safe_load(path.read_text())
    switch = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("RoPEBaseSwitch"))
    model = config["model"]["init_args"]
    return {
        "seq_len": switch["seq_len"],
        "rope_base": float(switch["base"]),
        "activation_checkpointing": model["activation_checkpointing"],
        "compile": model["compile"],
        "loss_chunk_size": model["loss_chunk_size"],
        "rows": config["data"]["init_args"]["samples_per_batch"],
    }


def section_long(args: argparse.Namespace) -> dict[str, Any]:
    from mm_lightning.data.synthetic import SyntheticTextDataModule
    from mm_lightning.stages import TextPretrainStage

    shape = long_context_shape()
    shape["seq_len"] = args.long_seq_len or shape["seq_len"]
    stage = TextPretrainStage(llm=args.llm, llm_overrides={"rope_base": shape["rope_base"]}, compile=shape["compile"],
                              activation_checkpointing=shape["activation_checkpointing"],
                              loss_chunk_size=shape["loss_chunk_size"])  # fmt: skip
    steps = args.long_steps + 1
    data = SyntheticTextDataModule(
        vocab_size=stage.llm.config.vocab_size,
        seq_len=shape["seq_len"],
        batch_size=shape["rows"],
        num_rows=steps * shape["rows"],
        mean_doc_len=10**12,
    )
    timed = fit_timed(stage, data.train_dataloader(), args.long_steps, 1, args.device)
    tokens = shape["seq_len"] * shape["rows"]
    flops = stage.llm.flops_per_token(shape["seq_len"]) * tokens
    return {**timed, **shape, "documents_per_row": 1, "tokens_per_s": tokens / timed["median_step_s"],
            "model_tflops": flops / timed["median_step_s"] / 1e12}  # fmt: skip


def section_muon(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "muon.json"
        script = str(ROOT / "benchmarks" / "muon_fsdp2.py")
        shape = ["--batch-size", str(args.batch), "--seq-len", str(args.seq_len), "--warmup", "2", "--rounds", "5"]
        command = [sys.executable, script, "--preset", args.llm, "--device", args.device, "--world", "1", *shape]
        command += ["--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"muon_fsdp2.py exit code {done.returncode}: {(done.stdout + done.stderr)[-1200:]}")
        result = json.loads(out.read_text())
    medians = {name: {k: statistics.median(v) for k, v in times.items()} for name, times in result["times_s"].items()}
    step = {name: m["step"] for name, m in medians.items()}
    return {**result, "medians_s": medians, "muon_over_adamw_step": step["muon"] / step["adamw"],
            "tokens_per_s": {name: result["tokens_per_step"] / seconds for name, seconds in step.items()}}  # fmt: skip


def section_matmul(args: argparse.Namespace) -> dict[str, Any]:
    tflops = {}
    for n in (4096, 8192):
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        tflops[n] = 2 * n**3 / cuda_time(lambda a=a, b=b: a @ b) / 1e12
    return {"bf16_tflops": max(tflops.values()), "by_size": tflops}


def cuda_time(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds of ``fn`` timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def usable_backends() -> tuple[str, ...]:
    """``("xformers", "sdpa")`` where xformers' kernels run, else ``("sdpa",)``."""
    return ("xformers", "sdpa") if xformers_available() else ("sdpa",)


def random_seq_ids(batch: int, seq_len: int, mean_doc: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, T]`` packed-sequence ids with random document boundaries."""
    starts = torch.rand(batch, seq_len, generator=generator) < 1.0 / mean_doc
    starts[:, 0] = True
    return (starts.cumsum(1) - 1).cuda()


def qkv(batch: int, heads: int, kv_heads: int, seq_len: int, dim: int, dtype: torch.dtype, generator):
    shapes = [(batch, heads, seq_len, dim), (batch, kv_heads, seq_len, dim), (batch, kv_heads, seq_len, dim)]
    return [torch.randn(s, generator=generator).to("cuda", dtype).requires_grad_(True) for s in shapes]


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def section_attention_numerics(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for causal in (True, False):
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = qkv(2, 8, 2, 512, 64, dtype, generator)
            seq_ids = random_seq_ids(2, 512, 96, generator)
            grad_out = torch.randn(q.shape, generator=generator).cuda()
            ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
            ref = attention(*ref_in, causal=causal, seq_ids=seq_ids, backend="sdpa")
            ref.backward(grad_out.double())
            for backend in usable_backends():
                for t in (q, k, v):
                    t.grad = None
                out = attention(q, k, v, causal=causal, seq_ids=seq_ids, backend=backend)
                out.backward(grad_out.to(dtype))
                row = {"backend": backend, "dtype": str(dtype).split(".")[-1], "causal": causal,
                       "out": _rel(out, ref)}  # fmt: skip
                for name, t, r in zip("qkv", (q, k, v), ref_in):
                    row[f"d{name}"] = _rel(t.grad, r.grad)
                rows.append(row)
    return {"rows": rows}


def section_attention_speed(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for seq_len, mean_doc in ((8192, 1024), (8192, 8192)):
        q, k, v = qkv(1, 32, 8, seq_len, 64, torch.bfloat16, generator)  # llm/1b: 32 heads, 8 kv heads, dim 64
        seq_ids = random_seq_ids(1, seq_len, mean_doc, generator)
        grad = torch.randn(q.shape, generator=generator).to("cuda", torch.bfloat16)
        for backend in usable_backends():

            def step(backend=backend):
                out = attention(q, k, v, causal=True, seq_ids=seq_ids, backend=backend)
                out.backward(grad)

            rows.append({"backend": backend, "seq_len": seq_len, "mean_doc": mean_doc, "ms": cuda_time(step) * 1e3})
    return {"rows": rows}


def section_vlm_numerics(device: str = "cuda", backends: tuple[str, ...] | None = None) -> None:
    from mm_lightning.data.caption_rows import caption_rows
    from mm_lightning.generation.decode import generate
    from mm_lightning.models.vlm import build_vlm
    from mm_lightning.ops.patches import image_to_patches

    torch.manual_seed(0)
    vlm = build_vlm("tiny", "tiny", "tiny").to(device).eval()
    images = [torch.rand(3, 14 * h, 14 * w) for h, w in ((5, 7), (4, 4), (6, 3))]
    patch_list, grids = zip(*(image_to_patches(img, 14, 1000) for img in images))
    captions = [torch.randint(5, 500, (n,)) for n in (9, 5, 12)]

    def logits_of(indices: list[int]) -> torch.Tensor:
        batch = _image_batch([patch_list[i] for i in indices], [grids[i] for i in indices],
                             [captions[i] for i in indices])  # fmt: skip
        rows = caption_rows(batch, vlm.projector.num_tokens, vlm.image_token_id)
        return vlm(rows["input_ids"].to(device), batch["patches"].to(device), batch["grid_hw"].to(device),
                   batch["seq_ids"].to(device), position_ids=rows["position_ids"].to(device),
                   seq_ids=rows["seq_ids"].to(device)).double()  # fmt: skip

    out = {}
    backends = backends or usable_backends()
    with torch.no_grad():
        packed = {}
        for backend in backends:
            for module in (vlm.llm, vlm.vit):
                module.config.attn_backend = backend
            packed[backend] = logits_of([0, 1, 2])
            alone = logits_of([1])
            start = vlm.projector.num_tokens(*grids[0]) + 2 + len(captions[0])  # sample 0: its image span and words
            out[f"{backend}_packed_vs_alone_rel"] = _rel(packed[backend][:, start : start + alone.shape[1]], alone)
        if len(backends) == 2:
            out["xformers_vs_sdpa_logits_rel"] = _rel(packed[backends[0]], packed[backends[1]])
        prompt = torch.randint(5, 500, (2, 7), device=device)
        cached = generate(vlm.llm, prompt, 24, greedy=True, use_cache=True)
        uncached = generate(vlm.llm, prompt, 24, greedy=True, use_cache=False)
        out["kv_cache_greedy_equal"] = bool(torch.equal(cached, uncached))
    return out


def _image_batch(patch_list, grids, captions) -> dict[str, torch.Tensor]:
    """An ``ImageTextDataModule``-shaped batch: packed patches and EOD-wrapped captions."""
    batch = pack_patches(list(patch_list), list(grids))
    length = max(len(c) for c in captions) + 2
    ids = torch.zeros(len(captions), length, dtype=torch.long)
    mask = torch.zeros(len(captions), length, dtype=torch.bool)
    for i, c in enumerate(captions):
        ids[i, 1 : len(c) + 1] = c
        mask[i, : len(c) + 2] = True
    return {**batch, "caption_ids": ids, "caption_mask": mask}


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "matmul": section_matmul,
    "llm": lambda args: section_llm(args, compile=False),
    "llm-compiled": lambda args: section_llm(args, compile=True),
    "vlm": lambda args: section_vlm(args, compile=False),
    "vlm-compiled": lambda args: section_vlm(args, compile=True),
    "long-128k": section_long,
    "muon-vs-adamw": section_muon,
    "attention-numerics": section_attention_numerics,
    "attention-speed": section_attention_speed,
    "vlm-numerics": lambda args: section_vlm_numerics(),
}


def add_mfu(results: dict[str, Any]) -> None:
    """MFU of every section with ``model_tflops``, against the ``matmul`` section's peak (when it ran)."""
    peak = results.get("matmul", {}).get("bf16_tflops")
    for result in results.values():
        if peak and "model_tflops" in result:
            result["mfu"] = result["model_tflops"] / peak


def report(run: dict[str, Any]) -> None:
    results = run["sections"]
    print(f"\n{run['device']}, torch {run['torch']}, xformers {run['xformers']}")
    if "bf16_tflops" in results.get("matmul", {}):
        print(f"bf16 matmul peak: {results['matmul']['bf16_tflops']:.0f} TFLOP/s")
    for name, result in results.items():
        if result["status"] != "ok":
            print(f"{name}: {result['status'].upper()}: {result['error'][-300:]}")
        elif name == "muon-vs-adamw":
            steps = ", ".join(f"{opt} step {m['step'] * 1e3:.0f} ms (optimizer {m['optimizer'] * 1e3:.0f} ms)"
                              for opt, m in result["medians_s"].items())  # fmt: skip
            print(f"{name}: {steps}; Muon / AdamW step {result['muon_over_adamw_step']:.2f}")
        elif "tokens_per_s" in result:
            mfu = f"MFU {result['mfu'] * 100:.1f}%" if "mfu" in result else "MFU n/a"
            print(f"{name}: {result['tokens_per_s']:,.0f} tok/s, {result['model_tflops']:.0f} TFLOP/s, {mfu}, step "
                  f"{result['median_step_s'] * 1e3:.0f} ms, peak {result['peak_mem_gib']:.1f} GiB, loss "
                  f"{result['first_loss']:.2f} -> {result['last_loss']:.2f}")  # fmt: skip
        elif name != "matmul":
            print(f"{name}: {json.dumps(result)[:400]}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        print_plan(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (--dry-run lists the sections without one)")
    if args.section:  # a child process: one section, its result into --part
        args.part.write_text(json.dumps(RUNNERS[args.section](args)))
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    run = {"device": device, "torch": torch.__version__, "xformers": _xformers_version(), "budget_s": args.budget}
    child_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--dry-run"]

    def save(results: dict[str, Any]) -> None:  # after every section
        run["sections"] = results
        add_mfu(results)
        if args.out:
            args.out.write_text(json.dumps(run, indent=2, default=str))

    results = run_sections(plan(args), lambda name, timeout: run_in_subprocess(name, timeout, child_argv), args.budget,
                           save)  # fmt: skip
    save(results)
    report(run)


def _xformers_version() -> str:
    try:
        import xformers
        import xformers.ops  # noqa: F401
    except Exception as err:  # report why, then run the SDPA sections alone
        return f"unavailable ({err!r:.200})"

    return xformers.__version__


if __name__ == "__main__":
    main()
