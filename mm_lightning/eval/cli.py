"""``mm-lightning evaluate``: held-out text perplexity of any stage checkpoint's LLM, on one fixed set of rows.

    mm-lightning evaluate --ckpt runs/pipelines/demo/cooldown/checkpoints/last.ckpt --data demo:sotu-captions

Every stage validates on its own data, batching and share, so their ``val`` curves do not compare across
stages; this command scores checkpoints of different stages on the same rows (the whole ``val`` split of a
text corpus, packed into ``--seq-len`` rows), which is how "joint training keeps the language ability" is
measured. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint
from mm_lightning.eval.perplexity import heldout_perplexity


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mm-lightning evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, nargs="+", help="one or more stage checkpoints (.ckpt)")
    parser.add_argument("--data", required=True, help="prepared text shards or a demo name (its val split is used)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Print one JSON line per checkpoint; errors propagate to :func:`~mm_lightning.errors.run_command`."""
    args = parse_args(argv)
    for path in args.ckpt:
        meta = checkpoint_meta(load_checkpoint(path), path)
        llm = load_backbone(path, "llm").eval()
        result = heldout_perplexity(llm, args.data, args.seq_len, args.batch_size)
        stage = {"stage": meta.get("stage"), "global_step": meta.get("global_step"), "rope_base": llm.rope_base}
        print(json.dumps({"ckpt": path, **stage, "data": args.data, **result}))
