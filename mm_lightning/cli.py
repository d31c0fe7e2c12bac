"""The ``mm-lightning`` command: one table of subcommands, one error policy (:func:`mm_lightning.errors.run_command`).

    mm-lightning fit --config configs/text_pretrain/tiny.yaml        # a stage (LightningCLI)
    mm-lightning pipeline --config configs/pipelines/demo.yaml       # every stage, resumably
    mm-lightning --help                                              # every command

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:mod:`mm_lightning.fit`); the others live in
their feature packages. Each entry names its ``module:function``, imported only when the command runs, so
``mm-lightning prepare`` never imports Lightning and ``--help`` answers at once. No module imports this one.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from mm_lightning.errors import run_command

# command -> (module:function taking the arguments after the command, one-line description)
COMMANDS = {
    "fit": ("mm_lightning.fit:main", "train a stage: a stage config file (LightningCLI)"),
    "validate": ("mm_lightning.fit:main", "validate a stage's model on its data (LightningCLI)"),
    "test": ("mm_lightning.fit:main", "test a stage's model on its data (LightningCLI)"),
    "predict": ("mm_lightning.fit:main", "predict with a stage's model (LightningCLI)"),
    "pipeline": ("mm_lightning.pipeline.cli:main", "run a pipeline file's stages in order, resumably"),
    "generate": ("mm_lightning.generation.cli:main", "generate text from a checkpoint, optionally about an image"),
    "evaluate": ("mm_lightning.eval.cli:main", "held-out text perplexity of stage checkpoints on the same rows"),
    "prepare": ("mm_lightning.prep.cli:main", "turn raw text, image-text, video, PDFs or chats into litdata shards"),
    "convert": ("mm_lightning.interop.cli:main", "weights in and out of Hugging Face (Llama, SigLIP) and open_clip"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def usage() -> str:
    """The ``mm-lightning --help`` text: every command with its description."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join([
        "usage: mm-lightning COMMAND [ARGS...]   (mm-lightning COMMAND --help for its arguments)",
        "",
        "Train vision-language models with the Kimi-VL staged recipe, on PyTorch Lightning.",
        "",
        "commands:",
        *lines,
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mm-lightning`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    # deprecation noise from inside Lightning and litdata, not actionable by users of the command
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mm-lightning: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, function_name = COMMANDS[command][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    args = argv if command in LIGHTNING_COMMANDS else rest  # LightningCLI parses the subcommand itself
    raise SystemExit(run_command(f"mm-lightning {command}", lambda: function(args)))


if __name__ == "__main__":
    main()
