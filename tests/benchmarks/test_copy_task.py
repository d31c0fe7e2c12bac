"""benchmarks/copy_task.py: rows that repeat a random span after a random gap, the copied targets marked exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import copy_task  # noqa: E402


def test_copied_targets_are_the_repeats() -> None:
    ids, seq_ids, copied = copy_task.copy_batch(torch.Generator().manual_seed(0), 3, 8, 50, packed=False)
    assert seq_ids is None and ids.shape == (3, 16) and copied.shape == (3, 15)
    assert torch.equal(ids[:, :8], ids[:, 8:])
    targets = ids[:, 1:]
    # every copied target equals the token 8 places before it; the first half's targets are not marked
    assert torch.equal(targets[copied].view(3, 8), ids[:, :8])
    assert not copied[:, :7].any() and copied[:, 7:].all()


def test_packed_rows_keep_documents_apart() -> None:
    ids, seq_ids, copied = copy_task.copy_batch(torch.Generator().manual_seed(1), 2, 8, 50, packed=True)
    assert ids.shape == (2, 16) and seq_ids.tolist() == [[0] * 8 + [1] * 8] * 2
    assert torch.equal(ids[:, :4], ids[:, 4:8]) and torch.equal(ids[:, 8:12], ids[:, 12:])
    marked = copied[0].nonzero().flatten().tolist()
    assert marked == [3, 4, 5, 6, 11, 12, 13, 14]  # targets 4-7 and 12-15; target 8 starts a new document


def test_a_gap_moves_each_repeat_by_its_own_distance() -> None:
    """With ``gap``, the distance from a token to its copy differs between rows: no fixed look-back solves the task."""
    rows, half, gap = 64, 6, 5
    generator = torch.Generator().manual_seed(2)
    ids, seq_ids, copied = copy_task.copy_batch(generator, rows, half, 5000, packed=False, gap=gap)
    assert seq_ids is None and ids.shape == (rows, 2 * half + gap) and copied.sum(1).tolist() == [half] * rows
    distances = set()
    for row in range(rows):
        targets = copied[row].nonzero().flatten() + 1  # positions of the copied tokens
        assert targets.tolist() == list(range(targets[0], targets[0] + half))  # one run, the span's length
        assert torch.equal(ids[row, targets], ids[row, :half])  # the span again
        distances.add(int(targets[0]))
    assert distances == set(range(half, half + gap + 1))  # every gap 0..5 occurs in 64 rows


def test_script_trains_and_reports_random_and_copied_ids(tmp_path) -> None:
    out = tmp_path / "copy.json"
    result = copy_task.main(["--steps", "2", "--every", "1", "--rows", "2", "--half", "8", "--out", str(out)])
    assert [point["step"] for point in result["curve"]] == [0, 1, 2]
    first = result["curve"][0]
    # an untrained model is near chance on both: it cannot copy yet
    assert abs(first["random"] - result["chance"]) < 2.5 and abs(first["copied"] - result["chance"]) < 2.5
    assert out.exists()


def test_muon_is_the_stages_optimizer_and_changes_the_run() -> None:
    """``--optimizer muon`` trains with ``build_optimizer``'s Muon + AdamW: same data and start, another curve."""
    argv = ["--steps", "3", "--every", "3", "--rows", "2", "--half", "8", "--lr", "3e-3"]
    adamw, muon = copy_task.main(argv), copy_task.main([*argv, "--optimizer", "muon"])
    assert adamw["curve"][0] == {**muon["curve"][0], "seconds": adamw["curve"][0]["seconds"]}  # same start
    assert muon["args"]["optimizer"] == "muon"
    assert abs(adamw["curve"][1]["random"] - muon["curve"][1]["random"]) > 1e-3
    assert muon["curve"][1]["random"] < muon["curve"][0]["random"]  # it learns (the unigram, in 3 steps)
