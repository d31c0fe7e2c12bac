"""What only a CUDA GPU can show: xformers against SDPA, bf16 and FSDP2 training, tokens/s and MFU.

One script, one call on a lent GPU (see ``benchmarks/README.md``). Each section is independent: a failure is
reported and the next section runs. Results go to stdout as a table and, with ``--out``, to a JSON file.

Sections:

* ``matmul``: the card's practical bf16 peak (median of 8192^3 products on random data), the MFU denominator.
* ``attention-numerics``: ``attention()`` on packed rows (random document boundaries, GQA) with the
  ``xformers`` and ``sdpa`` backends, against a float64 reference: relative error of the output and of the
  gradients of q, k and v, causal (LLM) and bidirectional (ViT), in float32 and bf16.
* ``attention-speed``: forward + backward time of the same packed attention, bf16, LLM-1b shapes.
* ``train``: ``TextPretrainStage`` (llm/1b) under a Lightning ``Trainer``, bf16-mixed, one GPU under
  ``ModelParallelStrategy`` (FSDP2 ``fully_shard`` on a one-GPU mesh), for each attention backend, eager and
  per-block compiled: tokens/s and MFU (PaLM FLOPs per token over the measured bf16 peak).
* ``vlm``: the aligned VLM path on CUDA: packed multimodal logits equal each sample alone (xformers),
  xformers against SDPA logits, and KV-cached greedy generation equal to uncached, in float32.

Usage::

    python benchmarks/gpu_check.py --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mm_lightning.ops.attention import attention, xformers_available
from mm_lightning.ops.patches import pack_patches

RESULTS: dict[str, Any] = {}


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


def section_matmul() -> None:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = cuda_time(lambda: a @ b)
    RESULTS["matmul_bf16_tflops"] = 2 * n**3 / seconds / 1e12


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


def section_attention_numerics() -> None:
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
    RESULTS["attention_numerics"] = rows


def section_attention_speed() -> None:
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
    RESULTS["attention_speed"] = rows


def train_throughput(
    backend: str,
    compile: bool,
    seq_len: int,
    batch: int,
    steps: int,
    warmup: int,
    preset: str = "1b",
    accelerator: str = "cuda",
    precision: str = "bf16-mixed",
) -> dict:
    """Tokens/s and MFU of ``llm/<preset>`` training under FSDP2 on one device (default: 1b, GPU, bf16-mixed)."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy

    from mm_lightning.data.synthetic import SyntheticTextDataModule
    from mm_lightning.stages.text_pretrain import TextPretrainStage

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))

    model = TextPretrainStage(llm=preset, llm_overrides={"attn_backend": backend}, compile=compile)
    data = SyntheticTextDataModule(vocab_size=model.llm.config.vocab_size, seq_len=seq_len, batch_size=batch,
                                   num_rows=(steps + warmup) * batch, mean_doc_len=1024)  # fmt: skip
    timer = Timer()
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=steps + warmup,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    ends = timer.ends[warmup - 1 :]
    step_s = sorted(b - a for a, b in zip(ends, ends[1:]))
    median = step_s[len(step_s) // 2]
    tokens_per_s = seq_len * batch / median
    flops = model.llm.flops_per_token(seq_len) * tokens_per_s
    return {
        "backend": backend, "compile": compile, "seq_len": seq_len, "batch": batch,
        "params": model.llm.num_params(), "median_step_s": median, "tokens_per_s": tokens_per_s,
        "model_tflops": flops / 1e12, "mfu": flops / 1e12 / RESULTS.get("matmul_bf16_tflops", float("nan")),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if accelerator == "cuda" else float("nan"),
        "wall_s": time.perf_counter() - start,
        "first_loss": timer.losses[0], "last_loss": timer.losses[-1],
    }  # fmt: skip


def section_train(args: argparse.Namespace) -> None:
    RESULTS["train"] = []
    variants = [("sdpa", False), ("sdpa", True), ("xformers", False), ("xformers", True)]
    for backend, compile in variants:
        if backend == "xformers" and not xformers_available():
            continue
        torch.cuda.reset_peak_memory_stats()
        try:
            RESULTS["train"].append(train_throughput(backend, compile, args.seq_len, args.batch, args.steps, 3))
        except Exception as err:  # keep the other variants
            RESULTS["train"].append({"backend": backend, "compile": compile, "error": repr(err)[:300]})
        torch.cuda.empty_cache()
        _save(args)


def section_vlm(device: str = "cuda", backends: tuple[str, ...] | None = None) -> None:
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
    RESULTS["vlm"] = out


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


def _save(args: argparse.Namespace) -> None:
    if args.out:
        args.out.write_text(json.dumps(RESULTS, indent=2))


def report() -> None:
    print(f"\n{RESULTS.get('device')}, torch {RESULTS.get('torch')}, xformers {RESULTS.get('xformers')}")
    if "matmul_bf16_tflops" in RESULTS:
        print(f"bf16 matmul 8192^3: {RESULTS['matmul_bf16_tflops']:.0f} TFLOP/s")
    for row in RESULTS.get("attention_numerics", []):
        errs = "  ".join(f"{k} {row[k]:.1e}" for k in ("out", "dq", "dk", "dv"))
        print(f"attn {row['backend']:8s} {row['dtype']:8s} causal={row['causal']!s:5s}  rel err vs fp64: {errs}")
    for row in RESULTS.get("attention_speed", []):
        print(f"attn fwd+bwd bf16 T={row['seq_len']} docs~{row['mean_doc']}: {row['backend']:8s} {row['ms']:.2f} ms")
    for row in RESULTS.get("train", []):
        if "error" in row:
            print(f"train llm/1b {row['backend']} compile={row['compile']}: ERROR {row['error']}")
            continue
        print(f"train llm/1b FSDP2 bf16 {row['backend']:8s} compile={row['compile']!s:5s} "
              f"{row['batch']}x{row['seq_len']}: {row['tokens_per_s']:.0f} tok/s, {row['model_tflops']:.0f} TFLOP/s, "
              f"MFU {row['mfu'] * 100:.1f}%, step {row['median_step_s'] * 1e3:.0f} ms, peak mem "
              f"{row['peak_mem_gib']:.1f} GiB, loss {row['first_loss']:.2f}->{row['last_loss']:.2f}")  # fmt: skip
    for key, value in RESULTS.get("vlm", {}).items():
        print(f"vlm {key}: {value}")
    for key, value in RESULTS.get("errors", {}).items():
        print(f"section {key} FAILED: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="measured training steps per variant")
    parser.add_argument("--sections", nargs="+", default=["matmul", "attention-numerics", "attention-speed",
                                                          "vlm", "train"])  # fmt: skip
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU")
    warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
    RESULTS.update(device=torch.cuda.get_device_name(), torch=torch.__version__, xformers=_xformers_version())
    sections = {
        "matmul": section_matmul, "attention-numerics": section_attention_numerics,
        "attention-speed": section_attention_speed, "vlm": section_vlm, "train": lambda: section_train(args),
    }  # fmt: skip
    for name in args.sections:
        start = time.perf_counter()
        try:
            sections[name]()
        except Exception:
            RESULTS.setdefault("errors", {})[name] = traceback.format_exc(limit=3)[-600:]
        print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)
        _save(args)
    report()


def _xformers_version() -> str:
    try:
        import xformers
        import xformers.ops  # noqa: F401
    except Exception as err:  # report why, then run the SDPA sections alone
        return f"unavailable ({err!r:.200})"

    return xformers.__version__


if __name__ == "__main__":
    main()
