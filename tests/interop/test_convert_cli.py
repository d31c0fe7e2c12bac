"""``mm-lightning convert``: the subcommands end to end, and a source that does not fit is one line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
from helpers.tiny_hf import llama_folder, siglip_folder  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mm_lightning.cli import main  # noqa: E402
from mm_lightning.interop.cli import SUBCOMMANDS  # noqa: E402

MM_LIGHTNING = [sys.executable, "-m", "mm_lightning.cli"]


def convert(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``mm-lightning convert ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as stop:
        main(["convert", *map(str, args)])
    output = capsys.readouterr()
    return stop.value.code, output.out, output.err


def test_llama_and_vision_round_trips_through_the_command(tmp_path, capsys):
    source = llama_folder(tmp_path, tie=True)
    code, out, err = convert(capsys, "import-llama", "--hf", source, "--out", tmp_path / "llama.ckpt")
    assert code == 0 and "--model.init_args.llm_checkpoint" in out, err
    code, out, err = convert(capsys, "export-llama", "--ckpt", tmp_path / "llama.ckpt", "--out", tmp_path / "hf")
    assert code == 0 and "rope_theta 500000" in out, err
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert before.keys() == after.keys() and all(after[k].equal(v) for k, v in before.items())
    siglip = siglip_folder(tmp_path)
    code, out, err = convert(capsys, "import-vit", "--hf", siglip, "--rope-2d", "--out", tmp_path / "vit.ckpt")
    assert code == 0 and "2-D RoPE on" in out, err
    code, out, err = convert(capsys, "export-vision", "--ckpt", tmp_path / "vit.ckpt", "--out", tmp_path / "vision")
    assert code == 0 and json.loads((tmp_path / "vision" / "config.json").read_text())["vit"]["rope_2d"] is True, err


def test_a_source_that_does_not_fit_is_one_line_and_exit_code_2(tmp_path):
    source = llama_folder(tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4}))
    cmd = [*MM_LIGHTNING, "convert", "import-llama", "--hf", str(source), "--out", str(tmp_path / "x.ckpt")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mm-lightning convert: error: "), result.stderr
    assert "model.layers.0.self_attn.k_proj.weight [32, 64] (expected [64, 64])" in lines[0]
    assert not (tmp_path / "x.ckpt").exists()


def test_user_mistakes_are_refused_in_one_line(tmp_path, capsys):
    code, _, err = convert(capsys, "import-llama", "--hf", tmp_path, "--out", tmp_path / "x.ckpt")
    assert code == 2 and "has no config.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = convert(capsys, "export-vision", "--ckpt", tmp_path / "missing.ckpt", "--out", tmp_path / "v")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = convert(capsys, "import-vit", "--out", tmp_path / "x.ckpt")  # no source
    assert code == 2 and "one of the arguments --hf --open-clip --exported is required" in err


FLAGS = {
    "export-llama": ["--ckpt", "--out", "--dtype", "--tokenizer"],
    "import-llama": ["--hf", "--out", "--drop-rope-scaling"],
    "import-vit": ["--hf", "--open-clip", "--exported", "--out", "--pos-grid", "--max-patches", "--rope-2d"],
    "export-vision": ["--ckpt", "--out", "--dtype"],
}


@pytest.mark.parametrize("subcommand", sorted(FLAGS))
def test_every_subcommand_keeps_its_flags(subcommand, capsys):
    assert set(FLAGS) == set(SUBCOMMANDS)
    code, out, _ = convert(capsys, subcommand, "--help")
    assert code == 0 and all(flag in out for flag in [*FLAGS[subcommand], "--overwrite"]), out
