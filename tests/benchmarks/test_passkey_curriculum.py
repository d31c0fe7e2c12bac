"""benchmarks/passkey_curriculum.py: its mix parsing, and short runs from a fresh LLM and from a stage checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import passkey_curriculum  # noqa: E402


def test_the_mix_reads_kinds_and_weights_and_refuses_the_rest() -> None:
    assert passkey_curriculum.parse_mix("recall:0.5,copy:0.2") == {"recall": 0.5, "copy": 0.2}
    for bad in ("recall", "poems:1", "recall:0,copy:0", "copy:-1"):
        with pytest.raises(ValueError, match="--mix"):
            passkey_curriculum.parse_mix(bad)


@pytest.mark.slow
def test_a_fresh_llm_trains_on_every_row_kind_and_is_scored_before_and_after(demo_sotu, tmp_path: Path) -> None:
    out = tmp_path / "curve.json"
    passkey_curriculum.main(["--key-smear", "--optimizer", "muon", "--steps", "3", "--every", "3", "--seq-len", "128",
                             "--rows", "6", "--mix", "recall:1,copy:1,text:1", "--passages", "0,1", "--lengths",
                             "128", "--prompts", "2", "--decoys", "2", "--final-lr", "1e-4",
                             "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert [point["step"] for point in result["curve"]] == [0, 3]
    assert result["curve"][0]["loss"] is None and result["curve"][1]["loss"] > 0
    assert 0 <= result["curve"][1]["accuracy@128"] <= 1 and len(result["smear_gates"]) == 4


@pytest.mark.slow
def test_smeared_keys_added_to_a_checkpoint_start_at_the_given_gate(tiny_checkpoints, tmp_path: Path) -> None:
    result = passkey_curriculum.main(["--ckpt", str(tiny_checkpoints["text"]), "--add-key-smear", "-2",
                                      "--gate-lr-scale", "30", "--steps", "1", "--seq-len", "96", "--rows", "2",
                                      "--lengths", "128", "--prompts", "2"])  # fmt: skip
    gates = [share for shares in result["smear_gates"].values() for share in shares]
    assert gates and all(0.05 < share < 0.3 for share in gates)  # sigmoid(-2) = 0.12, one step away


@pytest.mark.parametrize("flags", [["--add-key-smear", "-2"], ["--ckpt", "text.ckpt", "--key-smear"]])
def test_smear_flags_that_do_not_fit_the_model_source_are_refused(flags, capsys) -> None:
    with pytest.raises(SystemExit):
        passkey_curriculum.main(flags)
    assert "--add-key-smear goes with --ckpt, --key-smear without it" in capsys.readouterr().err


def test_a_negative_final_lr_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        passkey_curriculum.main(["--key-smear", "--final-lr", "-1"])
    assert "--final-lr must be at least 0" in capsys.readouterr().err
