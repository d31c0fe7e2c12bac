"""Sampling options that keep no token or flip the distribution are refused in one line, before any model work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mm_lightning.cli import main
from mm_lightning.errors import ConfigError
from mm_lightning.generation.decode import check_sampling, generate

BAD_FLAGS = [
    (["--top-k", "0"], "top_k must be at least 1"),
    (["--top-k", "-3", "--sample"], "top_k must be at least 1"),
    (["--temperature", "-0.5", "--sample"], "temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5", "--sample"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS)
def test_generate_refuses_bad_sampling_flags_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stop:  # the checkpoint does not exist: the flags are checked first
        main(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("mm-lightning generate: error: ") and message in err and err.count("\n") == 1


class NoForward(nn.Module):
    def forward(self, **kwargs) -> torch.Tensor:
        raise AssertionError("the options must be checked before the model runs")


@pytest.mark.parametrize(
    "options", [{"top_k": 0}, {"top_p": 0.0}, {"temperature": -1.0}, {"temperature": 2.0, "top_p": 2}]
)
def test_generate_checks_options_before_the_model_runs_greedy_or_not(options: dict) -> None:
    for greedy in (True, False):
        with pytest.raises(ConfigError):
            generate(NoForward(), torch.zeros(1, 3, dtype=torch.long), 4, greedy=greedy, use_cache=False, **options)


def test_valid_options_pass() -> None:
    check_sampling(0.0, 1, 1.0)
    check_sampling(0.7, None, 0.01)
