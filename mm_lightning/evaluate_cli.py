"""``mm-lightning evaluate``: held-out text perplexity of any stage checkpoint's LLM, on one fixed set of rows.

    mm-lightning evaluate --ckpt runs/joint_cooldown_tiny/checkpoints/last.ckpt --data demo:sotu-captions

Every stage validates on its own data, batching and share, so their ``val`` curves do not compare across
stages; this command scores checkpoints of different stages on the same rows (the whole ``val`` split of a
text corpus, packed into ``--seq-len`` rows), which is how "joint training keeps the language ability" is
measured. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint
from mm_lightning.errors import MMLightningError
from mm_lightning.losses.next_token import IGNORE_INDEX


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mm-lightning evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, nargs="+", help="one or more stage checkpoints (.ckpt)")
    parser.add_argument("--data", required=True, help="prepared text shards or a demo name (its val split is used)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser.parse_args(argv)


@torch.no_grad()
def heldout_perplexity(llm: torch.nn.Module, data_path: str, seq_len: int = 256, batch_size: int = 8) -> dict:
    """Mean next-token loss and perplexity of ``llm`` over every row of ``data_path``'s val split."""
    from mm_lightning.data.text import TextDataModule

    data = TextDataModule(data_path, seq_len=seq_len, batch_size=batch_size, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    total, count = 0.0, 0
    for batch in data.val_dataloader():
        logits = llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], seq_ids=batch["seq_ids"])
        labels = batch["labels"]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((labels != IGNORE_INDEX).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": math.exp(mean), "tokens": count}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        for path in args.ckpt:
            meta = checkpoint_meta(load_checkpoint(path), path)
            llm = load_backbone(path, "llm").eval()
            result = heldout_perplexity(llm, args.data, args.seq_len, args.batch_size)
            stage = {"stage": meta.get("stage"), "global_step": meta.get("global_step"), "rope_base": llm.rope_base}
            print(json.dumps({"ckpt": path, **stage, "data": args.data, **result}))
    except (MMLightningError, ValueError, FileNotFoundError) as error:
        print(f"mm-lightning evaluate: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
