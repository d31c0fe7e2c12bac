"""Training-step speed of the LLM on packed rows: attention document by document against the dense mask, alternately.

Rows of ``--seq-len`` tokens (default 8 x 2,048) hold random documents of mean length ``--mean-doc-len`` (256):
an EOD token ends a document with probability ``1 / mean`` at every position (geometric lengths), the rows of
``SyntheticTextDataModule``. One step is ``TextPretrainStage``'s: ``next_token_loss`` (the LLM with ``seq_ids``
and the chunked head loss), backward, ``AdamW.step()`` (``build_optimizer``) and ``zero_grad()``.

The two sides are the same model and optimizer state on the same batches; they differ only in how packed
attention runs (``mm_lightning.ops.varlen``):

* ``segmented``: the default, documents bucketed by length and attended without a mask (``is_causal``);
* ``dense``: inside ``dense_mask_attention()``, one ``[B, 1, T, T]`` block-diagonal causal mask over each row.

Each step gets a fresh ``seq_ids`` tensor, so the segment plan is rebuilt every step as in training. Steps
alternate (segmented, dense, dense, segmented, ...) after warm-up; medians, tokens/s and the median per-round
ratio ``dense / segmented`` are printed and written as JSON (``--out``)::

    python benchmarks/packed_attention.py --threads 2 --out packed_attention.json
    python benchmarks/packed_attention.py --threads 2 --compile --out packed_attention_c.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path

import torch
from alternating import measure_alternately, report, summarise

from mm_lightning.data.synthetic import SyntheticTextDataset
from mm_lightning.data.text import collate_token_blocks
from mm_lightning.ops.packing import seqlens_from_seq_ids
from mm_lightning.ops.varlen import dense_mask_attention
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import apply_compile
from mm_lightning.stages import TextPretrainStage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM preset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--mean-doc-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds (one step of each side per round)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured warm-up steps of each side")
    parser.add_argument("--compile", action="store_true", help="compile each block (the stage's compile switch)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def batches(args: argparse.Namespace, vocab_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` packed batches of ``SyntheticTextDataset`` rows, as the data module collates them."""
    rows = SyntheticTextDataset(count * args.batch_size, args.seq_len, vocab_size, args.mean_doc_len, args.seed)
    return [
        collate_token_blocks([rows[i * args.batch_size + j] for j in range(args.batch_size)], eod_id=0)
        for i in range(count)
    ]


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[dict[str, torch.Tensor]], int]:
    """One step of each side per batch, alternating; returns the step times, the batches and the parameter count."""
    stage = TextPretrainStage(llm=args.preset, compile=args.compile)
    if args.compile:  # what the stage's configure_model does with compile: true
        apply_compile(stage.llm.blocks)
    optimizer = build_optimizer(stage, OptimizerConfig(), lr=1e-4)
    data = batches(args, stage.llm.config.vocab_size, args.warmup + args.rounds)

    def step(index: int, attention_mode: type[contextlib.AbstractContextManager]) -> None:
        batch = {**data[index], "seq_ids": data[index]["seq_ids"].clone()}  # a new tensor: the plan is rebuilt
        with attention_mode():
            stage.next_token_loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    sides = {
        "segmented": lambda index: step(index, contextlib.nullcontext),
        "dense": lambda index: step(index, dense_mask_attention),
    }
    times = measure_alternately(sides, args.warmup, args.rounds)
    return times, data, sum(p.numel() for p in stage.parameters())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    times, data, params = measure(args)
    lengths = [length for batch in data for length in seqlens_from_seq_ids(batch["seq_ids"])]
    result = {
        **summarise(times, "dense", "segmented", args.batch_size * args.seq_len),
        "preset": args.preset,
        "params": params,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "mean_doc_len": args.mean_doc_len,
        "measured_mean_doc_len": statistics.mean(lengths),
        "documents_per_batch": len(lengths) / len(data),
        "used_score_share": sum(n * n for n in lengths) / (len(data) * args.batch_size * args.seq_len**2),
        "warmup": args.warmup,
    }
    header = (f"llm/{args.preset} ({params / 1e6:.2f}M), {args.batch_size} x {args.seq_len}, "
              f"{result['documents_per_batch']:.0f} documents a batch (mean {result['measured_mean_doc_len']:.0f} "
              f"tokens; {100 * result['used_score_share']:.1f}% of the dense mask's entries used), fp32, "
              f"{'compiled per block' if args.compile else 'eager'}")  # fmt: skip
    report(result, header, "attention", "tokens", args.out)


if __name__ == "__main__":
    main()
