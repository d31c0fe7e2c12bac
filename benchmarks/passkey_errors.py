"""Where does the passkey look-up go wrong? The first answer token's misses, by needle depth and by what was copied.

``passkey_scores`` says how often a model's first answer token (the look-up) is right; this script says what it
writes instead and where that comes from. For each prompt (:func:`~mm_lightning.eval.passkey.build_passkey_prompts`,
needles spread over the depth) it takes the model's top first token (the read-only ids suppressed, as greedy decoding
does) and, when that is wrong, finds the guess in the prompt: an induction copy writes the token that followed an
earlier occurrence of the prompt's last token (``er``, the end of `` locker``), so each miss is named by the region
that earlier token sits in (the intro's "A locker number", the filler, the question's "Which locker holds") or as a
token the prompt does not hold (a number of its own, another word). It prints, per length: the passkey's accuracy and
its later tokens' share on the same prompts (``passkey_scores``), first-token accuracy in five depth bins, the right
token's mean probability, and the misses by source.

Usage (a checkpoint saved by ``passkey_curriculum.py --save-dir``, or any stage checkpoint with an LLM)::

    python benchmarks/passkey_errors.py --ckpt /tmp/pk/A/step800.ckpt --lengths 256 1024 --prompts 100
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.checkpoint import CheckpointError, load_backbone, recorded_tokenizer
from mm_lightning.eval.passkey import (
    BATCH_TOKENS,
    INTRO,
    QUESTION,
    PasskeyPrompt,
    build_passkey_prompts,
    passkey_scores,
)
from mm_lightning.generation.decode import READ_ONLY_IDS
from mm_lightning.inference import projecting_positions

DEPTH_BINS = 5


def miss_source(tokenizer, prompt: PasskeyPrompt, guess: int, intro: int, question: int) -> str:
    """Name where a wrong first token comes from: the region of an earlier ``er`` it followed, or what it is."""
    ids = prompt.token_ids
    cue = ids[-1]  # the token the answer follows (``er``)
    regions = []
    for position in range(1, len(ids)):
        if ids[position] == guess and ids[position - 1] == cue:
            if position < intro:
                regions.append("intro")
            elif position >= len(ids) - question:
                regions.append("question")
            elif prompt.needle_start <= position < prompt.needle_end:
                regions.append("needle")
            else:
                regions.append("filler")
    text = tokenizer.id_to_token(guess)
    if regions:
        return f"copies {text!r} after the {'/'.join(sorted(set(regions)))}'s {tokenizer.id_to_token(cue)!r}"
    if guess in ids:
        return f"copies {text!r} from elsewhere in the prompt"
    digits = text.lstrip("Ġ")
    return "a number not in the prompt" if digits[:1].isdigit() else f"another token ({text!r})"


@torch.no_grad()
def diagnose(llm: torch.nn.Module, tokenizer, length: int, prompts: int, seed: int) -> dict:
    """First-token accuracy by depth, the right token's mean probability and the misses by source at ``length``."""
    intro = len(tokenizer_lib.encode(tokenizer, INTRO))
    question = len(tokenizer_lib.encode(tokenizer, QUESTION))
    suppress = torch.tensor(READ_ONLY_IDS)
    built = build_passkey_prompts(tokenizer, length, prompts, seed)
    bins: list[list[bool]] = [[] for _ in range(DEPTH_BINS)]
    probabilities, misses = [], Counter()
    rows = max(1, BATCH_TOKENS // length)
    for start in range(0, len(built), rows):
        chunk = built[start : start + rows]
        with projecting_positions(llm, slice(-1, None)):  # the output layer on the last position only, as scoring
            logits = llm(input_ids=torch.tensor([p.token_ids for p in chunk]))[:, -1].float()  # [B, V]
        probs = logits.softmax(-1)
        guesses = logits.index_fill(-1, suppress, float("-inf")).argmax(-1).tolist()
        for index, (prompt, guess) in enumerate(zip(chunk, guesses)):
            filler = length - intro - question - (prompt.needle_end - prompt.needle_start)  # the needle's depth range
            depth = (prompt.needle_start - intro) / max(1, filler)
            right = guess == prompt.answer_ids[0]
            bins[min(DEPTH_BINS - 1, int(depth * DEPTH_BINS))].append(right)
            probabilities.append(probs[index, prompt.answer_ids[0]].item())
            if not right:
                misses[miss_source(tokenizer, prompt, guess, intro, question)] += 1
    shares = [round(sum(b) / len(b), 2) if b else None for b in bins]
    scores = passkey_scores(llm, tokenizer, [length], prompts, seed)[length]  # the same prompts, greedily answered
    return {
        "accuracy": round(scores.accuracy, 3),
        "later_tokens": round(scores.later_tokens, 3),
        "first_token": round(sum(sum(b) for b in bins) / len(built), 3),
        "by_depth": shares,
        "right_token_probability": round(sum(probabilities) / len(probabilities), 3),
        "misses": dict(misses.most_common()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint with an LLM")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--prompts", type=int, default=100, help="prompts a length")
    parser.add_argument("--rope-base", type=float, help="set the LLM's RoPE base (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the passkeys (0: the prompts the probes score)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        llm, tokenizer = load_backbone(args.ckpt, "llm").eval(), recorded_tokenizer(args.ckpt)
    except CheckpointError as error:
        parser.error(str(error))
    if args.rope_base is not None:
        llm.set_rope_base(args.rope_base)
    result = {"ckpt": str(args.ckpt), "rope_base": llm.rope_base, "lengths": {}}
    for length in args.lengths:
        found = diagnose(llm, tokenizer, length, args.prompts, args.seed)
        result["lengths"][length] = found
        chance = found["right_token_probability"]
        print(f"@{length}: passkey {found['accuracy']:.2f}, later tokens {found['later_tokens']:.2f}; "
              f"first token {found['first_token']:.2f} (right token's probability {chance:.2f}); "
              f"by depth (0 = just after the intro) {found['by_depth']}")  # fmt: skip
        for source, count in found["misses"].items():
            print(f"    {count:4d}  {source}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
