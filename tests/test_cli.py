"""The ``mm-lightning`` dispatcher: every command listed with its description, each keeping its flags, and one
exit-code policy (a user's mistake is one line and exit code 2, never a traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mm_lightning.cli import COMMANDS, main
from mm_lightning.errors import ConfigError, Stopped, Terminated, run_command

MM_LIGHTNING = [sys.executable, "-m", "mm_lightning.cli"]

# flags each command must keep (a rename here breaks users' scripts and the README)
FLAGS = {
    "fit": ["--config", "--trainer.max_steps", "--ckpt_path", "--print_config"],
    "validate": ["--config", "--ckpt_path"],
    "test": ["--config", "--ckpt_path"],
    "predict": ["--config", "--ckpt_path"],
    "pipeline": ["--config", "--run-dir", "--stages", "--redo", "--set", "--dry-run"],
    "generate": [
        "--ckpt",
        "--image",
        "--prompt",
        "--tokenizer",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--sample",
        "--seed",
    ],  # fmt: skip
    "evaluate": ["--ckpt", "--data", "--seq-len", "--batch-size"],
    "prepare": ["text", "image-text", "video", "docs", "chat"],
    "convert": ["export-llama", "import-llama", "import-vit", "export-vision"],
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MM_LIGHTNING, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_its_description() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert set(FLAGS) == set(COMMANDS)
    for name, (_, description) in COMMANDS.items():
        assert f"  {name} " in result.stdout and description in result.stdout


def help_text(capsys: pytest.CaptureFixture, *args: str) -> str:
    """What ``mm-lightning ARGS --help`` prints, run in this process."""
    with pytest.raises(SystemExit) as stop:
        main([*args, "--help"])
    output = capsys.readouterr()
    assert stop.value.code == 0, output.err[-2000:]
    return output.out


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_command_keeps_its_flags(command: str, capsys: pytest.CaptureFixture) -> None:
    missing = [flag for flag in FLAGS[command] if flag not in help_text(capsys, command)]
    assert not missing, f"mm-lightning {command} --help lacks {missing}"


def test_prepare_subcommands_keep_their_flags(capsys: pytest.CaptureFixture) -> None:
    expected = {"text": ["--tokenizer", "--vocab-size", "--text-field", "--chunk-tokens"],
                "image-text": ["--image-field", "--caption-field", "--max-side", "--tokenizer"],
                "video": ["--video-field", "--fps", "--max-frames", "--max-side"],
                "docs": ["--dpi", "--max-pages", "--max-side"],
                "chat": ["--max-side", "--tokenizer"]}  # fmt: skip
    run_options = ["--output", "--val-fraction", "--strict", "--num-workers", "--overwrite", "--quiet"]
    for kind, flags in expected.items():
        text = help_text(capsys, "prepare", kind)
        missing = [flag for flag in [*flags, *run_options] if flag not in text]
        assert not missing, (kind, missing)


def test_unknown_or_missing_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture) -> None:
    for argv in (["fitt"], []):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
    assert "mm-lightning: error: unknown command 'fitt'" in capsys.readouterr().err


def test_prepare_imports_no_lightning(tmp_path) -> None:
    code = (
        "import sys\nfrom mm_lightning.cli import main\ntry:\n    main(['prepare', 'text', '--help'])\n"
        "except SystemExit:\n"
        "    print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:] + result.stderr[-2000:]


def test_the_exit_code_policy(capsys: pytest.CaptureFixture) -> None:
    def raise_(error: BaseException):
        def command() -> None:
            raise error

        return command

    assert run_command("x", lambda: None) == 0
    assert run_command("x", lambda: 3) == 3
    assert run_command("x", raise_(ConfigError("bad value"))) == 2
    assert capsys.readouterr().err == "x: error: bad value\n"
    assert run_command("x", raise_(FileNotFoundError("no such file: a.ckpt"))) == 2
    wrapped = RuntimeError("jsonargparse wrapper")
    wrapped.__cause__ = ConfigError("the real mistake")
    assert run_command("x", raise_(wrapped)) == 2 and "the real mistake" in capsys.readouterr().err
    assert run_command("x", raise_(Stopped("stage 'text' failed", 7))) == 7
    assert run_command("x", raise_(KeyboardInterrupt())) == 130
    assert run_command("x", raise_(Terminated())) == 143
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_command("x", raise_(ZeroDivisionError()))


def test_errors_reach_the_user_as_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--ckpt", str(tmp_path / "missing.ckpt"), "--data", "demo:sotu"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mm-lightning evaluate: error: ") and "missing.ckpt" in err and "\n" not in err
