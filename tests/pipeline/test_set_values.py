"""``pipeline --set KEY=VALUE`` with a value the stage's parser refuses: the whole reason, on one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_lightning.cli import main

ROOT = Path(__file__).resolve().parents[2]


def pipeline_error(tmp_path: Path, capsys: pytest.CaptureFixture, setting: str) -> str:
    """The one error line of a dry run of the demo pipeline with ``--set setting`` (exit code 2)."""
    demo = ROOT / "configs" / "pipelines" / "demo.yaml"
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "--config", str(demo), "--run-dir", str(tmp_path / "demo"), "--dry-run", "--set", setting])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert err.startswith("mm-lightning pipeline: error: ") and err.count("\n") == 1, err[-2000:]
    return err


def test_a_refused_value_names_the_key_the_expected_type_and_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    err = pipeline_error(tmp_path, capsys, "trainer.max_steps=abc")
    assert "stage 'text': the composed config does not parse" in err
    assert "\"trainer.max_steps\": Expected a <class 'int'>. Got value: abc" in err
    err = pipeline_error(tmp_path, capsys, "trainer.precision=bad")
    assert '"trainer.precision": Does not validate against any of the Union subtypes' in err
    assert "Given value: bad" in err
    err = pipeline_error(tmp_path, capsys, "trainer.max_steps=[1,")  # not YAML
    assert "the value is not valid YAML" in err and "line 1, column 4" in err
    assert not (tmp_path / "demo").exists()
