"""``mm-lightning evaluate``: held-out text perplexity and the copy check of any stage checkpoint's LLM, on fixed rows.

    mm-lightning evaluate --ckpt runs/pipelines/demo/cooldown/checkpoints/last.ckpt --data demo:sotu-captions
    mm-lightning evaluate --ckpt runs/pipelines/demo/*/checkpoints/last.ckpt --copy 256 1024

Every stage validates on its own data, batching and share, so their ``val`` curves do not compare across
stages; this command scores checkpoints of different stages on the same rows (the whole ``val`` split of a
text corpus, packed into ``--seq-len`` rows), which is how "joint training keeps the language ability" is
measured. ``--copy`` adds the copy check (:mod:`~mm_lightning.eval.copy_check`) at the given row lengths, in the
vocabulary of the tokenizer the checkpoint recorded: where a pipeline's copying forms and fades, stage by stage.
Prints one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json

from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint, recorded_tokenizer
from mm_lightning.errors import ConfigError
from mm_lightning.eval.copy_check import copy_chance, copy_scores
from mm_lightning.eval.perplexity import heldout_perplexity


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mm-lightning evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, nargs="+", help="one or more stage checkpoints (.ckpt)")
    parser.add_argument("--data", help="prepared text shards or a demo name (its val split is used) for perplexity")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--copy", type=int, nargs="+", metavar="LENGTH", help="the copy check at these row lengths")
    args = parser.parse_args(argv)
    if args.data is None and not args.copy:
        parser.error("give --data (held-out perplexity), --copy LENGTH ... (the copy check), or both")
    return args


def main(argv: list[str]) -> None:
    """Print one JSON line per checkpoint; errors propagate to :func:`~mm_lightning.errors.run_command`."""
    args = parse_args(argv)
    for path in args.ckpt:
        meta = checkpoint_meta(load_checkpoint(path), path)
        llm = load_backbone(path, "llm").eval()
        result = {"stage": meta.get("stage"), "global_step": meta.get("global_step"), "rope_base": llm.rope_base}
        if args.data is not None:
            result |= {"data": args.data, **heldout_perplexity(llm, args.data, args.seq_len, args.batch_size)}
        if args.copy:
            tokenizer = recorded_tokenizer(path)
            if tokenizer is None:
                raise ConfigError(f"{path} records no tokenizer: the copy check draws its ids from that vocabulary")
            scores = copy_scores(llm, tokenizer, args.copy)
            copied = {length: {"copy": score.copy, "gain": score.gain} for length, score in scores.items()}
            result |= {"copy": copied, "copy_chance": copy_chance(tokenizer)}
        print(json.dumps({"ckpt": path, **result}))
