"""Can direct retrieval training teach the tiny LLM the passkey? Train it on look-ups and score the passkey as it goes.

Issue 12's long demo needs the passkey at 90% (1x stage 1's rows) and 80% (4x) after stage 5, and its LLM passes
none. This script asks the question without the rest of the pipeline: it trains an LLM, fresh or a stage checkpoint's,
on a mix of rows that reward reading the context, and scores the passkey every ``--every`` steps
(:func:`~mm_lightning.eval.passkey.passkey_scores`: accuracy, the look-up's first token, the copy's later ones).
The row kinds (``--mix kind:weight,...``, drawn per row):

* ``recall``: recall documents (:mod:`mm_lightning.demo.recall`), facts stated between address passages and later
  stated again in the same words; ``--passages`` sets how many sentences lie between, so how far back a look-up reaches.
  Their wording shares no sentence with the passkey's template (``tests/eval/test_passkey.py``).
* ``copy``: copy rows (:mod:`mm_lightning.data.copy_rows`), a span of 32 random ids said again after up to
  ``seq_len - 80`` other ids; ``--decoys N`` plants N pieces of the span in the gap, each then a wrong id;
  ``--copy-loss repeat`` counts the loss on the repeat's predictable tokens only (the rest are random ids).
  ``--short-share P`` makes that share of the steps rows a quarter as long (four times as many, the same tokens), so
  that look-ups at the stage's old length train beside the new one.
* ``text``: windows of the State of the Union addresses (the demo corpus).

``--add-key-smear LOGIT`` gives a checkpoint's LLM smeared keys it was not trained with (``ops/key_smear.py``), their
gates starting at ``sigmoid(LOGIT)`` (their LR times ``--gate-lr-scale``): whether a stage-5 model can still take up the
one-layer copying head. The RoPE base is ``--rope-base`` (stage 5's 800,000 by default). A linear warm-up of 20 steps,
then a constant LR (or a linear decay to ``--final-lr``); bf16 autocast on a CPU that has it is left to ``--bf16``.
``--save-dir`` saves the LLM at every score as a checkpoint that ``load_backbone`` (and ``passkey_errors.py``) reads.

Usage (the README's runs, "Why the passkey stays at 0")::

    python benchmarks/passkey_curriculum.py --ckpt runs/pipelines/demo_long/cooldown/checkpoints/last.ckpt \\
        --add-key-smear -2 --gate-lr-scale 30 --optimizer muon --steps 300 --every 100 --bf16
    python benchmarks/passkey_curriculum.py --key-smear --optimizer muon --lr 3e-3 --rope-base 50000 \\
        --mix copy:0.3,recall:0.5,text:0.2 --seq-len 256 --rows 16 --passages 0,2 --steps 600 --every 100 --bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint, recorded_tokenizer, to_plain
from mm_lightning.data.copy_rows import copy_rows_dataset
from mm_lightning.demo.corpora import SOTU, ensure_demo_text, read_corpus
from mm_lightning.demo.recall import RecallConfig, address_sentences, recall_document
from mm_lightning.eval.passkey import passkey_scores
from mm_lightning.models.registry import build_backbone, build_from_config
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.schedules import LRSchedule, lr_at

KINDS = ("recall", "copy", "text")
WARMUP_STEPS = 20


def parse_mix(text: str) -> dict[str, float]:
    """``"recall:0.5,copy:0.2"`` -> ``{"recall": 0.5, "copy": 0.2}``; a clear ``ValueError`` for anything else."""
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition(":")
        if kind not in KINDS or not weight:
            raise ValueError(f"--mix takes kind:weight pairs with kinds {', '.join(KINDS)}, got {part!r}")
        mix[kind] = float(weight)
    if not all(w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"--mix weights must be >= 0 and not all 0, got {text!r}")
    return mix


def load_llm(args: argparse.Namespace):
    """The LLM to train and its tokenizer: a checkpoint's (smeared keys added if asked) or a fresh preset's."""
    if args.ckpt is None:
        tokenizer = tokenizer_lib.load_tokenizer(ensure_demo_text("demo:sotu") / "tokenizer.json")
        smear = {"key_smear": True} if args.key_smear else {}
        return build_backbone("llm", args.preset, vocab_size=tokenizer.get_vocab_size(), **smear), tokenizer
    llm = load_backbone(args.ckpt, "llm")
    if args.add_key_smear is not None:  # the same weights in an LLM whose keys also have smear gates
        config = dataclasses.replace(llm.config, key_smear=True, key_smear_init=args.add_key_smear)
        smeared = build_from_config("llm", config)
        missing, unexpected = smeared.load_state_dict(llm.state_dict(), strict=False)
        assert not unexpected and all("smear_logit" in name for name in missing), (missing, unexpected)
        llm = smeared
    return llm, recorded_tokenizer(args.ckpt)


def save_llm(llm: torch.nn.Module, meta: dict, path: Path) -> None:
    """Save ``llm`` as a checkpoint ``load_backbone(path, "llm")`` reads: ``meta`` (the source checkpoint's metadata
    block) with the LLM's config.

    The other backbones and the optimizer state are left out: the file serves the passkey diagnoses only.
    """
    meta = {**meta, "backbones": {"llm": to_plain(llm.config)}, "prefixes": {"llm": "llm."}}
    state = {f"llm.{name}": value for name, value in llm.state_dict().items()}  # rope_base is a dict (extra state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mm_lightning": meta, "state_dict": state}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="a stage checkpoint whose LLM trains (default: a fresh preset)")
    parser.add_argument("--preset", default="tiny", help="the fresh LLM's preset")
    parser.add_argument("--key-smear", action="store_true", help="the fresh LLM with smeared keys")
    parser.add_argument("--add-key-smear", type=float, metavar="LOGIT", help="add smeared keys to --ckpt's LLM")
    parser.add_argument("--gate-lr-scale", type=float, default=1.0, help="LR multiplier of the smear gates")
    parser.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr", type=float, help="decay the LR linearly to this by the last step (default: none)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="score the passkey every N steps")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens a training row")
    parser.add_argument("--rows", type=int, default=4, help="rows a step")
    parser.add_argument("--mix", default="text:0.3,recall:0.5,copy:0.2", help="row kinds and their weights")
    parser.add_argument("--decoys", type=int, default=0, help="decoy pieces of each copy row's span in its gap")
    parser.add_argument("--copy-loss", choices=("all", "repeat"), default="all", help="copy rows' loss on every token, "
                        "or on the repeat's predictable tokens only")  # fmt: skip
    parser.add_argument("--short-share", type=float, default=0.0, help="share of steps with rows a quarter as long")
    parser.add_argument("--facts", default="1,3", help="fewest,most facts of a recall document")
    parser.add_argument("--passages", default="1,7", help="fewest,most address sentences between two statements")
    parser.add_argument("--mentions", default="0,0", help="fewest,most sentences using a key's cue word without a key")
    parser.add_argument("--rope-base", type=float, default=800_000.0)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="passkey prompt lengths")
    parser.add_argument("--prompts", type=int, default=30, help="passkey prompts a length")
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the curve as JSON here")
    parser.add_argument("--save-dir", type=Path, help="save the LLM at every score here, as stepN.ckpt (LLM only)")
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix)
        recall = RecallConfig(facts=tuple(map(int, args.facts.split(","))),
                              passage_sentences=tuple(map(int, args.passages.split(","))),
                              mentions=tuple(map(int, args.mentions.split(","))))  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    if args.final_lr is not None and not 0 <= args.final_lr:
        parser.error("--final-lr must be at least 0")
    if not 0 <= args.short_share <= 1 or (args.short_share and args.seq_len < 4 * 96):
        parser.error("--short-share must lie in [0, 1], and with it --seq-len be at least 384")
    if args.steps < 1 or args.every < 1 or args.seq_len < 96 or args.rows < 1:
        parser.error("--steps, --every and --rows must be at least 1, --seq-len at least 96")
    if args.save_dir is not None and args.ckpt is None:
        parser.error("--save-dir goes with --ckpt (a saved LLM takes the checkpoint's tokenizer and metadata)")
    if (args.ckpt is None and args.add_key_smear is not None) or (args.ckpt is not None and args.key_smear):
        parser.error("--add-key-smear goes with --ckpt, --key-smear without it (a fresh LLM)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    llm, tokenizer = load_llm(args)
    llm.set_rope_base(args.rope_base)
    scales = {name: args.gate_lr_scale for name, _ in llm.named_parameters() if "smear_logit" in name}
    config = OptimizerConfig(name=args.optimizer, weight_decay=0.1, lr_scales=scales if args.gate_lr_scale != 1 else {})
    optimizer = build_optimizer(llm, config, args.lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    addresses = [record["text"] for record in read_corpus(SOTU)]
    eod = tokenizer_lib.eod_id(tokenizer)
    stream = torch.tensor([i for ids in tokenizer_lib.encode_batch(tokenizer, addresses) for i in [*ids, eod]]
                          if "text" in mix else [])  # fmt: skip
    sentences, rng = address_sentences(addresses), random.Random(args.seed)
    short_len = args.seq_len // 4
    lengths = (args.seq_len, short_len) if args.short_share else (args.seq_len,)
    copies = {length: copy_rows_dataset(tokenizer, 1 << 20, length, 32, length - 80, args.seed + n, args.decoys)
              for n, length in enumerate(lengths)}  # fmt: skip

    def row(kind: str, index: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:  # ids, labels: [length + 1]
        if kind == "copy":
            ids, predictable = copies[length].row(index)
            return ids, (ids if args.copy_loss == "all" else torch.where(predictable, ids, -100))
        if kind == "text":
            start = rng.randrange(len(stream) - length - 1)
            ids = stream[start : start + length + 1]
            return ids, ids
        ids: list[int] = []
        while len(ids) <= length:
            ids += [*tokenizer_lib.encode(tokenizer, recall_document(rng, sentences, recall)), eod]
        document_ids = torch.tensor(ids[: length + 1])
        return document_ids, document_ids

    # the LR as a share of each group's: a linear warm-up, then constant or a linear decay to final_lr / lr
    if args.final_lr is None or args.steps <= WARMUP_STEPS:
        shape = LRSchedule(kind="constant", peak_lr=1.0, warmup_steps=WARMUP_STEPS)
    else:
        shape = LRSchedule(kind="wsd", peak_lr=1.0, min_lr=args.final_lr / args.lr, warmup_steps=WARMUP_STEPS,
                           total_steps=args.steps, decay_steps=args.steps - WARMUP_STEPS)  # fmt: skip

    curve, start = [], time.perf_counter()
    source_meta = checkpoint_meta(load_checkpoint(args.ckpt), args.ckpt) if args.save_dir is not None else {}

    def score(step: int, loss: float | None) -> None:
        scores = passkey_scores(llm, tokenizer, args.lengths, args.prompts, seed=args.seed)
        llm.train()
        point = {"step": step, "loss": loss, "seconds": round(time.perf_counter() - start, 1),
                 **{f"{key}@{n}": getattr(s, key) for n, s in scores.items()
                    for key in ("accuracy", "first_token", "later_tokens")}}  # fmt: skip
        curve.append(point)
        shown = "  ".join(f"@{n} passkey {s.accuracy:.2f} first {s.first_token:.2f} later {s.later_tokens:.2f}"
                          for n, s in scores.items())  # fmt: skip
        shown_loss = "  -  " if loss is None else f"{loss:.3f}"
        print(f"step {step:5d}  loss {shown_loss}  {shown}  ({point['seconds']:.0f} s)", flush=True)
        if args.save_dir is not None:
            save_llm(llm, source_meta, args.save_dir / f"step{step}.ckpt")

    score(0, None)
    llm.train()
    short_steps = 0
    for step in range(1, args.steps + 1):
        short = args.short_share > 0 and rng.random() < args.short_share  # four times the rows, a quarter as long
        count, length = (4 * args.rows, short_len) if short else (args.rows, args.seq_len)
        short_steps += short
        kinds = rng.choices(list(mix), list(mix.values()), k=count)
        rows = [row(kind, step * count + r, length) for r, kind in enumerate(kinds)]
        batch, labels = (torch.stack(part) for part in zip(*rows))  # [R, T + 1] each, -100: no loss
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * lr_at(shape, step)
        with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
            logits = llm(input_ids=batch[:, :-1])  # [R, T, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            score(step, loss.item())
    gates = {name: torch.sigmoid(p.detach()).tolist() for name, p in llm.named_parameters() if "smear_logit" in name}
    if gates:
        print("smear gates (each key's share of its predecessor's):", json.dumps(gates))
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "curve": curve,
              "short_steps": short_steps, "smear_gates": gates}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
