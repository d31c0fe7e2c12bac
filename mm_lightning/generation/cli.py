"""``mm-lightning generate``: text from a stage checkpoint, optionally conditioned on an image.

    mm-lightning generate --ckpt runs/pipelines/demo/align/checkpoints/last.ckpt --image scene.png
    mm-lightning generate --ckpt runs/pipelines/demo/text/checkpoints/last.ckpt --prompt "Fellow citizens"

The backbones are rebuilt from the configurations the checkpoint recorded (``weights_only`` loading). With
``--image``, the prompt starts with the image span the alignment stage trains captioning on
(:func:`~mm_lightning.generation.caption.image_prompt`), the image cut into patches as the checkpoint's stage
cut its training images (:func:`~mm_lightning.checkpoint.image_preprocessing`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.checkpoint import image_preprocessing, load_backbone, load_vlm, recorded_tokenizer
from mm_lightning.demo import demo_tokenizer
from mm_lightning.errors import ConfigError
from mm_lightning.generation.caption import decode_text, image_prompt
from mm_lightning.generation.decode import check_sampling, generate
from mm_lightning.media.images import decode_image


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mm-lightning generate", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a stage checkpoint (.ckpt)")
    parser.add_argument("--image", help="an image file; needs a checkpoint with vit and projector (alignment on)")
    parser.add_argument("--prompt", default="", help="text after the image (or alone)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one the checkpoint recorded)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="with --sample: >= 0 (0 is greedy)")
    parser.add_argument("--top-k", type=int, help="with --sample: keep the k most likely tokens (k >= 1)")
    parser.add_argument("--top-p", type=float, help="with --sample: keep this probability mass, in (0, 1]")
    parser.add_argument("--sample", action="store_true", help="sample (top-k/top-p) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def prompt_embeddings(args: argparse.Namespace, tokenizer) -> tuple[torch.nn.Module, torch.Tensor]:
    """The LLM and the prompt's input embeddings ``[1, T, d]`` (the image span first when an image is given)."""
    text_ids = tokenizer_lib.encode(tokenizer, args.prompt) if args.prompt else []
    if args.image is None:
        llm = load_backbone(args.ckpt, "llm").eval()
        if not text_ids:
            text_ids = [tokenizer_lib.eod_id(tokenizer)]  # an empty prompt starts a new document
        return llm, llm.embed(torch.tensor([text_ids]))
    vlm = load_vlm(args.ckpt)
    pixels = decode_image(Path(args.image).read_bytes())  # [3, H, W]
    return vlm.llm, image_prompt(vlm, pixels, image_preprocessing(args.ckpt), text_ids)


def checkpoint_tokenizer(ckpt: str, given: str | None = None):
    """``given`` (a ``tokenizer.json``), else the one the checkpoint recorded; older checkpoints that record none fall
    back to the demo tokenizer, with a note on stderr."""
    if given:
        return tokenizer_lib.load_tokenizer(given)
    recorded = recorded_tokenizer(ckpt)
    if recorded is not None:
        return recorded
    print(f"mm-lightning generate: {ckpt} records no tokenizer (written before they did): using the demo one; "
          "pass --tokenizer for another", file=sys.stderr)  # fmt: skip
    return tokenizer_lib.load_tokenizer(demo_tokenizer())


def run(argv: list[str]) -> str:
    """Generate and return the decoded continuation (special tokens left out)."""
    args = parse_args(argv)
    check_sampling(args.temperature, args.top_k, args.top_p)  # before loading anything
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    tokenizer = checkpoint_tokenizer(args.ckpt, args.tokenizer)
    with torch.no_grad():
        llm, embeds = prompt_embeddings(args, tokenizer)
        new_tokens = generate(
            llm, inputs_embeds=embeds, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, greedy=not args.sample, eos_id=tokenizer_lib.eod_id(tokenizer),
            generator=torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
    return decode_text(tokenizer, new_tokens[0].tolist())


def main(argv: list[str]) -> None:
    """Print the generated text; errors propagate to :func:`~mm_lightning.errors.run_command`."""
    print(run(argv))
