"""``notebooks/finetune.ipynb`` runs top to bottom (nbclient, a real kernel) and fine-tuning measurably helps.

The notebook's checkpoint is the shortened demo pipeline's last one (the test suite's shared run) and it fine-tunes
for fewer steps than its default; everything else runs as a user would run it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_finetune_notebook_runs_and_fine_tuning_helps(short_demo_run: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(ROOT / "notebooks" / "finetune.ipynb", as_version=4)
    os.environ.update(
        MM_NOTEBOOK_CHECKPOINT=str(short_demo_run / "long_context" / "checkpoints" / "last.ckpt"),
        MM_NOTEBOOK_STEPS="40",
        MM_NOTEBOOK_OUT=str(tmp_path / "out"),
    )
    try:
        where = {"metadata": {"path": str(ROOT)}}
        NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where).execute()
    finally:
        for name in ("MM_NOTEBOOK_CHECKPOINT", "MM_NOTEBOOK_STEPS", "MM_NOTEBOOK_OUT"):
            os.environ.pop(name, None)
    last = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    match = re.search(r"answer-token loss ([\d.]+) -> ([\d.]+); exact match ([\d.]+) -> ([\d.]+)", last)
    assert match, last
    loss_before, loss_after, match_before, match_after = map(float, match.groups())
    assert loss_after < loss_before - 1.0, last
    assert match_after >= match_before, last
    assert (tmp_path / "out" / "adapters.pt").is_file() and (tmp_path / "out" / "merged.ckpt").is_file()
    pictures = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3  # answers before, the loss curve, answers after
