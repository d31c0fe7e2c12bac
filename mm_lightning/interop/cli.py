"""``mm-lightning convert``: weights in and out of Hugging Face and open_clip layouts, one subcommand each.

    mm-lightning convert export-llama --ckpt runs/.../last.ckpt --out hf/my-llm
    mm-lightning convert import-llama --hf path/to/Llama-3.2-1B --out llama.ckpt [--drop-rope-scaling]
    mm-lightning convert import-vit --hf path/to/siglip-so400m-patch14-384 --out vit.ckpt [--rope-2d]
    mm-lightning convert import-vit --open-clip ViT-B-16-SigLIP:open_clip_model.safetensors --out vit.ckpt
    mm-lightning convert export-vision --ckpt runs/.../align/last.ckpt --out vision/

Imported checkpoints start stage 1 (``--model.init_args.llm_checkpoint``), alignment (``llm_checkpoint``,
``vit_checkpoint``) or the joint stages. Nothing is downloaded. A source that does not fit (a missing tensor, a shape
the config does not describe, an architecture the project's models cannot compute) is one line naming it, exit
code 2 (:func:`mm_lightning.errors.run_command`).
"""

from __future__ import annotations

import argparse
import importlib

from mm_lightning.interop.files import DTYPES

SUBCOMMANDS = {  # name -> (module:function, one-line description)
    "export-llama": ("mm_lightning.interop.llama:export_llama", "a checkpoint's LLM as a Hugging Face Llama folder"),
    "import-llama": ("mm_lightning.interop.llama:import_llama", "a Hugging Face Llama folder as an LLM checkpoint"),
    "import-vit": (
        "mm_lightning.interop.vision:import_vit",
        "a SigLIP vision tower (Hugging Face, open_clip) as a ViT",
    ),
    "export-vision": ("mm_lightning.interop.vision:export_vision", "a checkpoint's ViT and projector as safetensors"),
}


def build_parser(prog: str = "mm-lightning convert") -> argparse.ArgumentParser:
    """The parser of every ``convert`` subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    sub = {name: subparsers.add_parser(name, help=help, description=help) for name, (_, help) in SUBCOMMANDS.items()}
    for name in ("export-llama", "export-vision"):
        sub[name].add_argument("--ckpt", required=True, help="a stage checkpoint (.ckpt) or one convert wrote")
        sub[name].add_argument("--out", required=True, help="the folder to write")
    sub["export-llama"].add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                                     help="weights' dtype (auto: an imported model's own, else float32)")  # fmt: skip
    sub["export-llama"].add_argument("--tokenizer", help="a project tokenizer.json (default: the checkpoint's)")
    sub["export-vision"].add_argument("--dtype", default="float32", choices=list(DTYPES))
    sub["import-llama"].add_argument("--hf", required=True, help="a Llama folder: config.json + safetensors")
    sub["import-llama"].add_argument("--drop-rope-scaling", action="store_true",
                                     help="convert a config with RoPE scaling (Llama 3.x) to plain RoPE; "
                                     "the logits then differ from the original's")  # fmt: skip
    sources = sub["import-vit"].add_mutually_exclusive_group(required=True)
    sources.add_argument("--hf", help="a Hugging Face SigLIP folder (SiglipVisionModel or SiglipModel)")
    sources.add_argument("--open-clip", help="NAME:WEIGHTS (.pt/.safetensors) or local-dir:FOLDER of open_clip")
    sources.add_argument("--exported", help="a folder export-vision wrote")
    sub["import-vit"].add_argument("--pos-grid", type=int, help="resize the position table to this side (bicubic)")
    sub["import-vit"].add_argument("--max-patches", type=int, help="cap on patches per image")
    sub["import-vit"].add_argument("--rope-2d", action=argparse.BooleanOptionalAction, default=None,
                                   help="add MoonViT's 2-D RoPE (default: as the source; SigLIP has none)")  # fmt: skip
    for name in ("import-llama", "import-vit"):
        sub[name].add_argument("--out", required=True, help="the .ckpt file to write")
    for name in SUBCOMMANDS:
        sub[name].add_argument("--overwrite", action="store_true", help="replace what --out holds")
    return parser


def main(argv: list[str]) -> None:
    """Run one subcommand and print its summary; errors propagate to :func:`~mm_lightning.errors.run_command`."""
    args = vars(build_parser().parse_args(argv))
    module_name, function_name = SUBCOMMANDS[args.pop("subcommand")][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)  # open_clip loads only when needed
    print(function(**args))
