"""Can the LLM preset learn to copy from its context at all? A synthetic induction task, trained from scratch.

Issue 12's passkey stays at 0 after every demo stage, and text that repeats numbers (``demo:sotu-captions-recall``,
denser variants too) taught no copying in 400-1,250 steps: a repeated number's digits scored no better than their
first statement. This script separates "cannot" from "has not yet": it trains a fresh preset LLM on rows that are a
random token sequence followed by the same sequence again (``--packed``: two such documents a row, attention kept
inside each through ``seq_ids``), where the second half is predictable only by copying, and logs the loss on the
first half (chance, ``ln(--span-vocab)``) and on the copied half. Copying shows as the copied half's loss leaving the
first half's and falling towards 0 (an induction head; Olsson et al. 2022); no template, no words, nothing shared with
the passkey prompts.

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

FIRST_ID = 100
"""Lowest token id of the random spans (below it sit the special tokens)."""


def copy_batch(generator: torch.Generator, rows: int, half: int, span_vocab: int, packed: bool,
               ) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """Rows of ``[s, s]`` (or ``[a, a, b, b]`` as two documents when ``packed``), with the copied positions.

    Returns:
        ``input_ids [R, 2 * half]``, ``seq_ids`` (``None`` unless packed) and ``copied [R, 2 * half - 1]``, True where
        the *target* of a position lies in a repeated half (the first token of a repeat included: it follows the
        end of the first statement, so predicting it needs the copy too).
    """
    spans = torch.randint(FIRST_ID, FIRST_ID + span_vocab, (rows, half), generator=generator)
    if not packed:
        ids, seq_ids = torch.cat([spans, spans], 1), None
        starts = [half]
    else:
        quarter = half // 2
        a, b = spans[:, :quarter], spans[:, quarter : 2 * quarter]
        ids = torch.cat([a, a, b, b], 1)
        seq_ids = torch.zeros_like(ids)
        seq_ids[:, 2 * quarter :] = 1
        starts = [quarter, 3 * quarter]
    width = ids.shape[1]
    copied = torch.zeros(rows, width - 1, dtype=torch.bool)
    length = half if not packed else half // 2
    for start in starts:
        copied[:, start - 1 : start - 1 + length] = True  # position p predicts token p + 1
    return ids, seq_ids, copied


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="LLM preset (llm/<preset>)")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--every", type=int, default=100, help="log every N steps")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--half", type=int, default=32, help="tokens in the first statement (the row is twice this)")
    parser.add_argument("--span-vocab", type=int, default=1000, help="distinct token ids the spans draw from")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--packed", action="store_true", help="two documents a row, kept apart by seq_ids")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the curve as JSON here")
    args = parser.parse_args(argv)
    if args.half < 4 or args.steps < 1 or args.every < 1:
        parser.error("--half must be at least 4, --steps and --every at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    llm = build_backbone("llm", args.preset)
    if FIRST_ID + args.span_vocab > llm.config.vocab_size:
        parser.error(f"--span-vocab {args.span_vocab} does not fit the preset's vocabulary ({llm.config.vocab_size})")
    optimizer = torch.optim.AdamW(llm.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    print(f"chance: {math.log(args.span_vocab):.3f} nats a token (uniform over {args.span_vocab} ids)")
    for step in range(args.steps + 1):
        ids, seq_ids, copied = copy_batch(generator, args.rows, args.half, args.span_vocab, args.packed)
        logits = llm(ids, seq_ids=seq_ids)  # [R, T, V]
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        losses = losses.view(args.rows, -1)  # [R, T - 1]
        if step % args.every == 0 or step == args.steps:
            point = {
                "step": step,
                "first_half": losses[~copied].mean().item(),
                "copied_half": losses[copied].mean().item(),
                "seconds": round(time.perf_counter() - start, 1),
            }
            curve.append(point)
            print(
                f"step {step:5d}  loss first half {point['first_half']:.3f}  copied half {point['copied_half']:.3f}"
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
