"""benchmarks/passkey_curriculum.py: its mix parsing, and short runs from a fresh LLM and from a stage checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.mark.slow
def test_short_steps_train_rows_a_quarter_as_long(demo_sotu) -> None:
    result = passkey_curriculum.main(["--key-smear", "--steps", "2", "--every", "2", "--seq-len", "384", "--rows", "1",
                                      "--mix", "recall:1,copy:1", "--short-share", "1", "--decoys", "2", "--lengths",
                                      "128", "--prompts", "2"])  # fmt: skip
    assert result["short_steps"] == 2 and result["curve"][-1]["loss"] > 0


@pytest.mark.parametrize("flags", [["--short-share", "1.5"], ["--short-share", "0.5", "--seq-len", "256"]])
def test_a_short_share_out_of_range_or_rows_too_short_to_quarter_is_refused(flags, capsys) -> None:
    with pytest.raises(SystemExit):
        passkey_curriculum.main(["--key-smear", *flags])
    assert "--short-share must lie in [0, 1]" in capsys.readouterr().err


def test_a_negative_final_lr_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        passkey_curriculum.main(["--key-smear", "--final-lr", "-1"])
    assert "--final-lr must be at least 0" in capsys.readouterr().err


@pytest.mark.slow
def test_saved_llms_load_as_checkpoints_and_the_repeat_loss_trains(tiny_checkpoints, tmp_path: Path) -> None:
    from mm_lightning.checkpoint import load_backbone

    passkey_curriculum.main(["--ckpt", str(tiny_checkpoints["text"]), "--steps", "2", "--every", "2", "--seq-len",
                             "128", "--rows", "2", "--mix", "copy:1", "--copy-loss", "repeat", "--lengths", "128",
                             "--prompts", "2", "--save-dir", str(tmp_path)])  # fmt: skip
    first, last = (load_backbone(tmp_path / f"step{step}.ckpt", "llm") for step in (0, 2))
    assert last.rope_base == 800_000.0  # the probe's RoPE base travels with the weights
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), last.state_dict().values())
               if isinstance(a, torch.Tensor))  # fmt: skip


def test_save_dir_needs_a_checkpoint(capsys) -> None:
    with pytest.raises(SystemExit):
        passkey_curriculum.main(["--key-smear", "--save-dir", "out"])
    assert "--save-dir goes with --ckpt" in capsys.readouterr().err
