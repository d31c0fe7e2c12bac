"""Can the LLM preset learn to copy from its context at all? A synthetic induction task, trained from scratch.

Issue 12's passkey stays at 0 after every demo stage, and text that repeats numbers (``demo:sotu-captions-recall``,
denser variants too) taught no copying in 400-1,250 steps: a repeated number's digits scored no better than their
first statement. This script separates "cannot" from "has not yet": it trains a fresh preset LLM on rows that are a
random token sequence followed by the same sequence again (``--packed``: two such documents a row, attention kept
inside each through ``seq_ids``), where the repeat is predictable only by copying, and logs the loss on the random
ids (chance, ``ln(--span-vocab)``) and on the copied ones. Copying shows as the copied ids' loss leaving the
random ids' and falling towards 0 (an induction head; Olsson et al. 2022); no template, no words, nothing shared with
the passkey prompts. Between a span and its repeat lie ``0..--gap`` random ids, drawn per row: with ``--gap 0`` every
copy is exactly the span's length back, and a head that attends that far back (RoPE makes that easy) solves the task
without matching any content, which is not what a passkey needs (the tiny preset learns that in 200-400 steps and still
fails the passkey).

Usage::

    python benchmarks/copy_task.py --steps 700 --every 100 --out copy_task.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.models.registry import build_backbone
from mm_lightning.ops.key_smear import GATE_INIT
from mm_lightning.optim import OptimizerConfig, build_optimizer

FIRST_ID = 100
"""Lowest token id of the random spans (below it sit the special tokens)."""


def copy_batch(generator: torch.Generator, rows: int, half: int, span_vocab: int, packed: bool, gap: int = 0,
               ) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """Rows of ``[s, g, s, t]``: a random span ``s``, ``g`` random ids, the span again, ``t`` random ids to fill the row
    (``packed``: two such documents a row, each with a span of ``half // 2``), with the copied positions.

    ``g`` is drawn per document from ``0..gap`` and ``t`` is ``gap - g``, so every row has the same width while the
    distance between a token and its copy differs from row to row: with ``gap = 0`` it is always the span's length,
    and a head that looks that many positions back copies without matching any content.

    Returns:
        ``input_ids [R, W]``, ``seq_ids`` (``None`` unless packed) and ``copied [R, W - 1]``, True where the *target* of
        a position lies in a repeated span (the first token of a repeat included: it follows the gap, so predicting it
        needs the copy too). ``W`` is ``2 * half + gap`` (packed: ``2 * (half // 2 * 2 + gap)``).
    """
    length, documents = (half, 1) if not packed else (half // 2, 2)
    width = 2 * length + gap
    ids = torch.randint(FIRST_ID, FIRST_ID + span_vocab, (rows, documents * width), generator=generator)
    copied = torch.zeros(rows, documents * width, dtype=torch.bool)
    gaps = torch.randint(0, gap + 1, (rows, documents), generator=generator)
    for row in range(rows):
        for document in range(documents):
            first = document * width
            repeat = first + length + int(gaps[row, document])
            ids[row, repeat : repeat + length] = ids[row, first : first + length]
            copied[row, repeat : repeat + length] = True
    seq_ids = None
    if packed:
        seq_ids = torch.arange(documents).repeat_interleave(width).expand(rows, -1).clone()
    return ids, seq_ids, copied[:, 1:]  # position p predicts token p + 1


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM preset (llm/<preset>)")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--every", type=int, default=100, help="log every N steps")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--half", type=int, default=32, help="tokens in the span (the row is twice this plus --gap)")
    parser.add_argument("--span-vocab", type=int, default=1000, help="distinct token ids the spans draw from")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "muon"),
        default="adamw",
        help="adamw: torch's AdamW; muon: the stages' Muon + AdamW (build_optimizer); no weight decay",
    )
    parser.add_argument("--key-smear", action="store_true", help="smeared keys (LLMConfig.key_smear)")
    parser.add_argument("--smear-init", type=float, default=GATE_INIT,
                        help="the smear gates' initial logit (LLMConfig.key_smear_init)")  # fmt: skip
    parser.add_argument("--packed", action="store_true", help="two documents a row, kept apart by seq_ids")
    parser.add_argument("--gap", type=int, default=32, help="most random ids between span and copy (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the curve as JSON here")
    args = parser.parse_args(argv)
    if args.half < 4 or args.steps < 1 or args.every < 1 or args.gap < 0:
        parser.error("--half must be at least 4, --steps and --every at least 1, --gap at least 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    smear = {"key_smear": True, "key_smear_init": args.smear_init} if args.key_smear else {}
    llm = build_backbone("llm", args.preset, **smear)
    if FIRST_ID + args.span_vocab > llm.config.vocab_size:
        parser.error(f"--span-vocab {args.span_vocab} does not fit the preset's vocabulary ({llm.config.vocab_size})")
    if args.optimizer == "muon":
        optimizer = build_optimizer(llm, OptimizerConfig(name="muon", weight_decay=0.0), args.lr)
    else:  # torch's defaults (betas 0.9, 0.999), as every figure measured before --optimizer existed
        optimizer = torch.optim.AdamW(llm.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    print(f"chance: {math.log(args.span_vocab):.3f} nats a token (uniform over {args.span_vocab} ids)")
    for step in range(args.steps + 1):
        ids, seq_ids, copied = copy_batch(generator, args.rows, args.half, args.span_vocab, args.packed, args.gap)
        logits = llm(ids, seq_ids=seq_ids)  # [R, T, V]
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        losses = losses.view(args.rows, -1)  # [R, T - 1]
        if step % args.every == 0 or step == args.steps:
            point = {
                "step": step,
                "random": losses[~copied].mean().item(),
                "copied": losses[copied].mean().item(),
                "seconds": round(time.perf_counter() - start, 1),
            }
            curve.append(point)
            print(
                f"step {step:5d}  loss random ids {point['random']:.3f}  copied ids {point['copied']:.3f}"
                f"  ({point['seconds']:.0f} s)",
                flush=True,
            )
        if step == args.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "curve": curve,
              "chance": math.log(args.span_vocab)}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
