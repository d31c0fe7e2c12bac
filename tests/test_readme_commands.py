"""Every command of the README's ```bash blocks runs as written on a fresh clone after README command 1 (issue 15).

The commands are read from the README (a ``\\`` continuation joined to its line, ``#`` comments dropped), and each
must be classified below, so a new README command fails :func:`test_every_readme_command_is_classified` until it is:
``RUN`` gives the arguments appended to shorten it (``""``: run exactly as written), ``SKIP`` the reason the suite
cannot run it. The ``RUN`` commands of a block run in order in a folder laid out as a clone after README command 1
(:func:`clone_after_command_1`): ``runs/pipelines/demo`` is the suite's short demo pipeline run (``short_demo_run``)
and ``configs/pipelines/demo.yaml`` the shortened pipeline file that made it, so the pipeline commands find their run
finished, as command 1 leaves it; the README's own data (``my_corpus/``, ``book.txt``, ``my_pairs/``,
``my_chats.jsonl``) are stand-ins made from the demo assets.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.short_pipeline import link_checkpoints, short_demo_pipeline
from PIL import Image, ImageChops

from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_SCENE = ROOT / "mm_lightning" / "demo" / "assets" / "examples" / "scene.png"
SOTU = ROOT / "mm_lightning" / "demo" / "assets" / "sotu" / "sotu.jsonl.gz"


def shortened(steps: int = 2, *more: str) -> str:
    """``fit`` arguments for ``steps`` steps without validation (the short pipeline run validates every stage)."""
    return " ".join(
        [f"--trainer.max_steps {steps}", "--trainer.limit_val_batches 0", "--data.init_args.num_workers 0", *more]
    )


FIT = shortened()
LONG_FIT = shortened(2, "--data.init_args.samples_per_batch 2")  # rows of 1,024 and 4,096 tokens

RUN = {  # README command -> the arguments appended to shorten it ("": exactly as written)
    # the pipeline: on the short demo run, every stage finished
    "mm-lightning pipeline --config configs/pipelines/demo.yaml --dry-run": "",
    "mm-lightning pipeline --config configs/pipelines/demo.yaml": "",
    "mm-lightning pipeline --config configs/pipelines/demo.yaml --stages text,vit": "",
    "mm-lightning pipeline --config configs/pipelines/demo_long.yaml --dry-run": "",
    "mm-lightning pipeline --config configs/pipelines/demo_long_copy.yaml --dry-run": "",
    # alignment alone: as written, joint pre-training, cooldown and long context train again too (~100 s)
    "mm-lightning pipeline --config configs/pipelines/demo.yaml --redo align": "--stages align",
    # stage 1 alone, 2 steps: as written, six stages of 20 steps
    "mm-lightning pipeline --config configs/pipelines/demo.yaml --run-dir runs/quick --set trainer.max_steps=20": (
        "--stages text --set trainer.max_steps=2"
    ),
    # Lightning Studio's data preparation, with 2 processes for the many-core machine's 32
    "mm-lightning prepare text my_corpus/ -o data/my_text --vocab-size 32768 --num-workers 32": "--num-workers 2",
    "mm-lightning prepare image-text my_pairs/ -o data/my_pairs --tokenizer data/my_text/tokenizer.json --num-workers"
    " 32": "--num-workers 2",
    # stage 1
    "mm-lightning fit --config configs/text_pretrain/tiny.yaml --trainer.max_steps 600 --model.init_args.llm_overrides"
    " '{n_layers: 6}' --trainer.logger.init_args.name text_6_layers": FIT,
    "mm-lightning fit --config configs/text_pretrain/tiny.yaml --config configs/text_pretrain/fsdp2_cpu.yaml": FIT,
    # the copy warm-up (copy rows have no workers), then stage 1 from its last.ckpt
    "mm-lightning fit --config configs/text_pretrain/tiny_copy_warmup.yaml": (
        "--trainer.max_steps 2 --trainer.limit_val_batches 0"
    ),
    "mm-lightning fit --config configs/text_pretrain/tiny.yaml --config configs/text_pretrain/tiny_captions.yaml"
    " --config configs/text_pretrain/tiny_copy.yaml": FIT,
    "mm-lightning fit --help": "",
    "mm-lightning --help": "",
    "mm-lightning prepare text my_corpus/ -o data/my_text --vocab-size 32768": "",
    "mm-lightning prepare text book.txt -o data/my_book --doc-chars 4000": "",
    "mm-lightning fit --config configs/text_pretrain/tiny.yaml --data.init_args.data_path data/my_text"
    " --model.init_args.llm_overrides '{vocab_size: 32768}' --trainer.logger.init_args.name my_text": FIT,
    # stages 2a and 2b, generation
    "mm-lightning fit --config configs/vit_coca/tiny.yaml": FIT,
    "mm-lightning fit --config configs/align/tiny.yaml": FIT,
    "mm-lightning generate --ckpt runs/pipelines/demo/align/checkpoints/last.ckpt"
    " --image mm_lightning/demo/assets/examples/scene.png": "",
    'mm-lightning generate --ckpt runs/pipelines/demo/text/checkpoints/last.ckpt --prompt "Fellow citizens" --sample'
    " --top-p 0.9": "",
    # stages 3-5
    "mm-lightning fit --config configs/joint_pretrain/tiny.yaml": FIT,
    "mm-lightning fit --config configs/joint_cooldown/tiny.yaml": shortened(10),  # ReWarmup's 10 warmup steps fit
    "mm-lightning fit --config configs/joint_long_context/tiny_4x.yaml": LONG_FIT,
    "mm-lightning fit --config configs/joint_long_context/tiny_16x.yaml": LONG_FIT,
    "mm-lightning evaluate --ckpt runs/pipelines/demo/text/checkpoints/last.ckpt"
    " runs/pipelines/demo/cooldown/checkpoints/last.ckpt --data demo:sotu-captions": "--data demo:sotu",  # 1/4 the rows
    # four checkpoints at one short length (the later --copy replaces the first)
    "mm-lightning evaluate --ckpt runs/pipelines/demo/{text,joint,cooldown,long_context}/checkpoints/last.ckpt"
    " --copy 256 1024": "--copy 64",
    # fine-tuning
    "mm-lightning fit --config configs/sft/tiny.yaml": FIT,
    "mm-lightning fit --config configs/sft/tiny.yaml --model.init_args.lora null --trainer.logger.init_args.name"
    " sft_full": FIT,
    "mm-lightning prepare chat my_chats.jsonl -o data/my_chats": "",
    # Hugging Face out
    "mm-lightning convert export-llama --ckpt runs/pipelines/demo/long_context/checkpoints/last.ckpt"
    " --out hf/demo-llm": "",
    'python -c "from transformers import AutoTokenizer, LlamaForCausalLM;'
    " LlamaForCausalLM.from_pretrained('hf/demo-llm'); AutoTokenizer.from_pretrained('hf/demo-llm')\"": "",
    "mm-lightning convert export-vision --ckpt runs/pipelines/demo/align/checkpoints/last.ckpt"
    " --out hf/demo-vision": "",
}

GPUS = "needs 8 GPUs"
STUDIO = "needs a Lightning Studio (its /teamspace folders, the lightning CLI, an account)"
S3 = "needs an S3 bucket and credentials"
WEIGHTS = "needs downloaded weights (network); tests/interop converts small random models built locally"
SKIP = {  # README command -> why the suite does not run it
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && mm-lightning pipeline --config'
    " configs/pipelines/demo.yaml": "README command 1 itself: installs from the package index (network) and trains"
    " the demo pipeline for ~13 min; the short_demo_run fixture runs that pipeline shortened, and every RUN command"
    " runs after it",
    ". .venv/bin/activate && python -m pytest -q -n 2": "the whole test suite, this test included",
    "mm-lightning pipeline --config configs/pipelines/demo_long.yaml": "the long demo: about 57 minutes of training on"
    " the 2-core CPU; its stage configs are the demo's (which the short demo run trains) and its dry run runs",
    "mm-lightning pipeline --config configs/pipelines/demo_long_copy.yaml": "the long demo with the copy curriculum:"
    " over an hour of training on the 2-core CPU; its dry run runs, tests/stages/test_copy_warmup.py chains its first"
    " two stages and tests/data/test_copy_rows.py builds its copy-row source",
    "mm-lightning pipeline --config configs/pipelines/gpu_8x_1b.yaml": GPUS,
    "torchrun --standalone --nproc_per_node 8 -m mm_lightning.cli pipeline --config configs/pipelines/gpu_8x_1b.yaml": (
        GPUS
    ),
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE:29500 -m mm_lightning.cli"
    " pipeline --config configs/pipelines/gpu_8x_1b.yaml --set trainer.num_nodes=2 --set"
    " trainer.strategy.init_args.data_parallel_size=16": "needs two 8-GPU machines and a rendezvous host",
    "srun mm-lightning pipeline --config configs/pipelines/gpu_8x_1b.yaml --set trainer.num_nodes=2 --set"
    " trainer.strategy.init_args.data_parallel_size=16": "needs a SLURM cluster of two 8-GPU machines",
    "cd /teamspace/studios/this_studio && git clone <this repository> mm_lightning": STUDIO,
    "cp mm_lightning/.lightning_studio/on_start.sh .lightning_studio/on_start.sh": STUDIO,
    "bash .lightning_studio/on_start.sh": f"{STUDIO}; it installs from the package index (network);"
    " tests/test_studio.py runs it with a stand-in pip",
    'lightning job run --name text-1b --studio <this studio> --machine <an 8-GPU machine> --command "cd'
    " /teamspace/studios/this_studio/mm_lightning && mm-lightning fit --config configs/text_pretrain/1b_fsdp2.yaml"
    ' --data.init_args.data_path s3://bucket/text"': STUDIO,
    'lightning job run --name recipe-1b --studio <this studio> --machine <an 8-GPU machine> --command "cd'
    " /teamspace/studios/this_studio/mm_lightning && mm-lightning pipeline --config configs/pipelines/gpu_8x_1b.yaml"
    ' --run-dir <shared storage>/recipe-1b"': STUDIO,
    "lightning mmt run --name recipe-1b-2x8 --studio <this studio> --num-machines 2 --machine <an 8-GPU machine>"
    ' --command "cd /teamspace/studios/this_studio/mm_lightning && mm-lightning pipeline --config'
    " configs/pipelines/gpu_8x_1b.yaml --run-dir <shared storage>/recipe-1b-2x8 --set trainer.num_nodes=2 --set"
    ' trainer.strategy.init_args.data_parallel_size=16"': STUDIO,
    "aws s3 sync data/my_text s3://bucket/my_text": S3,
    "aws s3 sync data/my_pairs s3://bucket/my_pairs": S3,
    "mm-lightning fit --config configs/text_pretrain/1b_fsdp2.yaml --data.init_args.data_path s3://bucket/my_text"
    " --data.init_args.cache_dir /tmp/litdata-cache": f"{GPUS} and {S3}",
    "mm-lightning fit --config configs/text_pretrain/1b_fsdp2.yaml --data.init_args.data_path s3://bucket/shards": (
        f"{GPUS} and {S3}"
    ),
    "mm-lightning fit --config configs/vit_coca/so400m_fsdp2.yaml --data.init_args.data_path s3://bucket/image-text": (
        f"{GPUS} and {S3}"
    ),
    "mm-lightning convert import-llama --hf path/to/Llama-3.2-1B --out runs/imports/llama.ckpt --drop-rope-scaling": (
        WEIGHTS
    ),
    "mm-lightning fit --config configs/text_pretrain/1b_fsdp2.yaml --model.init_args.llm_checkpoint"
    " runs/imports/llama.ckpt": f"{GPUS} and the Llama import above",
    "mm-lightning convert import-vit --hf path/to/siglip-so400m-patch14-384 --out runs/imports/vit.ckpt": WEIGHTS,
    "mm-lightning convert import-vit --open-clip ViT-SO400M-14-SigLIP-384:open_clip_model.safetensors --out"
    " runs/imports/vit.ckpt": WEIGHTS,
    "mm-lightning convert import-vit --open-clip local-dir:path/to/open_clip_folder --out runs/imports/vit.ckpt"
    " --rope-2d": WEIGHTS,
}


def drop_comment(line: str) -> str:
    """``line`` up to its first ``#`` that starts a shell comment (not inside quotes, at the start or after a space)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def bash_blocks(readme: str) -> list[tuple[str, list[str]]]:
    """``(section heading, commands)`` of every ```bash block, in order: a line ending in ``\\`` joined to the next,
    comments and blank lines dropped."""
    blocks = []
    for match in re.finditer(r"^```bash\n(.*?)^```", readme, re.S | re.M):
        heading = re.findall(r"^#{2,4} (.+)$", readme[: match.start()], re.M)  # not a block's "# comment"
        commands, pending = [], ""
        for line in match.group(1).splitlines():
            line = drop_comment(line).strip()
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            command, pending = (pending + line).strip(), ""
            if command:
                commands.append(command)
        blocks.append((heading[-1] if heading else "top", commands))
    return blocks


def run_blocks() -> list[tuple[str, list[str]]]:
    """The blocks with a ``RUN`` command, each named by its heading (numbered where a heading has several)."""
    blocks = [(heading, commands) for heading, commands in bash_blocks(README.read_text()) if set(commands) & set(RUN)]
    names = [re.sub(r"\W+", "-", heading).strip("-").lower() for heading, _ in blocks]
    return [(f"{name}-{names[:i].count(name)}", commands) for i, (name, (_, commands)) in enumerate(zip(names, blocks))]


def test_every_readme_command_is_classified() -> None:
    commands = [command for _, block in bash_blocks(README.read_text()) for command in block]
    assert len(commands) > 30  # the extraction found the README's commands
    unclassified = [command for command in commands if command not in RUN and command not in SKIP]
    assert not unclassified, "README commands in neither RUN nor SKIP (add each to one):\n" + "\n".join(unclassified)
    assert not set(RUN) & set(SKIP), set(RUN) & set(SKIP)
    stale = [command for command in [*RUN, *SKIP] if command not in commands]
    assert not stale, "RUN/SKIP commands no longer in the README (remove them):\n" + "\n".join(stale)


def test_the_extraction_joins_continuations_and_drops_comments() -> None:
    readme = "## Here\n\n```bash\n# a comment\nmm-lightning fit \\\n  --config a.yaml   # trailing\n\necho '#' x\n```\n"
    assert bash_blocks(readme) == [("Here", ["mm-lightning fit --config a.yaml", "echo '#' x"])]


def test_the_example_image_is_a_held_out_demo_scene() -> None:
    """The README's example image is the demo's validation scene 0, small enough to keep in the repository."""
    assert EXAMPLE_SCENE.stat().st_size < 20_000
    with Image.open(EXAMPLE_SCENE) as image:
        committed = image.convert("RGB")
    rendered = render_scene(generate_scene(SceneConfig(), "val", 0))
    assert committed.size == rendered.size and ImageChops.difference(committed, rendered).getbbox() is None


def write_own_data(folder: Path) -> None:
    """Stand-ins for the README's own data: ``my_corpus/`` and ``book.txt`` (State of the Union addresses),
    ``my_pairs/`` (held-out demo scenes with a ``captions.jsonl``) and ``my_chats.jsonl`` (questions about them)."""
    with gzip.open(SOTU, "rt") as file:
        addresses = [json.loads(line)["text"] for line in itertools.islice(file, 60)]
    corpus = folder / "my_corpus"
    corpus.mkdir()
    for i, text in enumerate(addresses[:40]):
        (corpus / f"address_{i}.txt").write_text(text)
    (corpus / "more.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in addresses[40:]))
    (folder / "book.txt").write_text("\n\n".join(addresses[:20]))
    pairs, chats = folder / "my_pairs", []
    pairs.mkdir()
    captions = []
    for i in range(24):
        scene = generate_scene(SceneConfig(), "val", i)
        render_scene(scene).save(pairs / f"{i}.png")
        captions.append({"image": f"{i}.png", "caption": scene.caption})
        question = [{"type": "image", "image": f"my_pairs/{i}.png"}, {"type": "text", "text": "The background?"}]
        chats.append({"messages": [{"role": "user", "content": question},
                                   {"role": "assistant", "content": scene.background}]})  # fmt: skip
    (pairs / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in captions))
    (folder / "my_chats.jsonl").write_text("".join(json.dumps(chat) + "\n" for chat in chats))


def clone_after_command_1(folder: Path, run: Path) -> Path:
    """``folder`` laid out as a clone after README command 1: the package and every config linked in,
    ``configs/pipelines/demo.yaml`` the short pipeline file, ``runs/pipelines/demo`` a copy of its ``run``, and the
    stand-ins for your own data."""
    (folder / "mm_lightning").symlink_to(ROOT / "mm_lightning")
    for config in (ROOT / "configs").rglob("*"):
        if config.is_file():
            (folder / config.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            (folder / config.relative_to(ROOT)).symlink_to(config)
    scratch = folder / ".short"
    scratch.mkdir()
    spec = yaml.safe_load(short_demo_pipeline(scratch).read_text()) | {"run_dir": "runs/pipelines/demo"}
    demo = folder / "configs" / "pipelines" / "demo.yaml"
    demo.unlink()
    demo.write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copytree(run, folder / "runs" / "pipelines" / "demo", symlinks=True, copy_function=link_checkpoints)
    write_own_data(folder)
    return folder


def run_readme_command(command: str, folder: Path) -> subprocess.CompletedProcess:
    """``command`` with its ``RUN`` arguments, through bash in ``folder``, with this environment's ``mm-lightning``
    and ``python`` first on the PATH (and the tests' helpers importable: the short pipeline's joint stage names one)."""
    env = os.environ | {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MM_TEST_KILL_PIPELINE", None)
    line = f"{command} {RUN[command]}".strip()
    return subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=900)


RUN_BLOCKS = run_blocks()


@pytest.mark.slow
@pytest.mark.parametrize("commands", [c for _, c in RUN_BLOCKS], ids=[name for name, _ in RUN_BLOCKS])
def test_the_readme_commands_run_after_command_1(commands: list[str], short_demo_run: Path, tmp_path: Path) -> None:
    folder = clone_after_command_1(tmp_path, short_demo_run)
    for command in [command for command in commands if command in RUN]:
        result = run_readme_command(command, folder)
        assert result.returncode == 0, f"{command} {RUN[command]}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
