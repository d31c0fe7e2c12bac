"""The Python API: the README's block runs as written (on tiny checkpoints where the demo pipeline's would be), and
each call does what it says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mm_lightning as mml
from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene
from mm_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def readme_api_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_block_runs_as_written(tmp_path: Path, tiny_checkpoints: dict[str, Path]) -> None:
    for stage, source in (("long_context", "joint"), ("vit", "vit")):
        folder = tmp_path / "runs" / "pipelines" / "demo" / stage / "checkpoints"
        folder.mkdir(parents=True)
        shutil.copy(tiny_checkpoints[source], folder / "last.ckpt")
    result = subprocess.run([sys.executable, "-c", readme_api_block()], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = [line for line in result.stdout.splitlines() if line.startswith("[")][-1]
    assert sum(float(p) for p in probabilities.strip("[]").split(",")) == pytest.approx(1.0, abs=1e-5)
    adapters = torch.load(tmp_path / "adapters.pt", weights_only=True)
    assert adapters["lora_config"]["rank"] == 8 and adapters["adapters"]


def test_the_model_records_everything_and_answers(tiny_checkpoints: dict[str, Path]) -> None:
    model = mml.load(tiny_checkpoints["joint"])
    assert model.stage == "JointStage" and model.preprocessing.max_patches == 36
    assert model.tokenizer.get_vocab_size() == 8192  # the checkpoint's own tokenizer, recorded at save time
    image = render_scene(generate_scene(SceneConfig(), "val", 1))
    answer = model.ask(image, "What colour is the background?", max_new_tokens=4)
    same = model.chat([{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": "What colour is the background?"}]}],
                      max_new_tokens=4)  # fmt: skip
    assert isinstance(answer, str) and answer == same
    assert model.score("Fellow citizens") > 0


def test_embeddings_are_normalised_and_classify_ranks_by_similarity(tiny_checkpoints: dict[str, Path]) -> None:
    vit = mml.load(tiny_checkpoints["vit"])
    image = render_scene(generate_scene(SceneConfig(), "val", 2))
    images, texts = vit.encode_image([image, image]), vit.encode_text(["a bee", "a red apple", "a fish"])
    assert images.shape == (2, 128) and texts.shape == (3, 128)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(images[0], images[1])
    probabilities = torch.tensor(vit.classify(image, ["bee", "red apple", "fish"], template="a {}"))
    assert probabilities.argmax() == (images[:1] @ texts.T).argmax()


def test_wrong_uses_are_one_line_errors(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    text = mml.load(tiny_checkpoints["text"])
    with pytest.raises(ConfigError, match="not a VLM checkpoint"):
        text.caption(render_scene(generate_scene(SceneConfig(), "val", 0)))
    with pytest.raises(ConfigError, match="no CoCa heads"):
        mml.load(tiny_checkpoints["joint"]).encode_text(["a bee"])
    with pytest.raises(ConfigError, match="does not exist"):
        mml.load(tiny_checkpoints["joint"]).ask(tmp_path / "missing.png", "What?")
    with pytest.raises(Exception, match="does not exist"):
        mml.load(tmp_path / "missing.ckpt")
