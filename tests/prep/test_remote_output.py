"""Preparation writes to a local folder: an output URL (``s3://...``) is refused in one line, and nothing is written
(it used to become a local folder named ``s3:``, reported as the remote path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mm_lightning.cli import main

REPO = Path(__file__).resolve().parents[2]
EXTRAS = {"video": "av", "docs": "pypdfium2"}


@pytest.mark.parametrize("kind", ["text", "image-text", "video", "docs"])
@pytest.mark.parametrize("url", ["s3://bucket/corpus", "gs://bucket/a/b/", "file:///tmp/out"])
def test_prepare_refuses_an_output_url(
    kind: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind in EXTRAS:
        pytest.importorskip(EXTRAS[kind])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["prepare", kind, str(tmp_path / "inputs"), "-o", url, "--quiet"])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert err.startswith("mm-lightning prepare: error: ") and err.count("\n") == 1, err[-2000:]
    assert f"the output {url} is a URL" in err and "local folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_the_prepare_script_refuses_an_output_url(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("prepare_text", REPO / "data_prep" / "prepare_text.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("one document")
    assert script.main([str(tmp_path / "corpus.txt"), "-o", "s3://bucket/x", "--quiet"]) == 2
    assert "prepare_text.py: error: the output s3://bucket/x is a URL" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]
