"""Files written whole or not at all, and temporary files of dead writers removed."""

import os
import subprocess
import sys

import pytest
import torch

from mm_lightning.atomic_io import AtomicCheckpointIO, copy_file, remove_orphans, write_with


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old and whole")

    def half_then_die(f):
        f.write(b"new but ")
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        write_with(target, half_then_die)
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_temporary_file_lies_beside_the_target_whatever_tmpdir_says(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    seen = []
    write_with(tmp_path / "ckpt" / "a.ckpt", lambda f: seen.append(f.name))
    assert os.path.dirname(seen[0]) == str(tmp_path / "ckpt") and os.path.basename(seen[0]).startswith(".a.ckpt.tmp-")


def test_orphans_of_dead_writers_go_and_a_live_writers_temporary_stays(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".last.ckpt.tmp-{int(dead.stdout)}"
    live = tmp_path / f".step2.ckpt.tmp-{os.getpid()}"
    for path in (orphan, live, tmp_path / "step2.ckpt"):
        path.write_bytes(b"x")
    assert remove_orphans(tmp_path) == [orphan]
    assert live.exists() and (tmp_path / "step2.ckpt").exists()


def test_checkpoint_io_round_trips_and_copy_is_exact(tmp_path):
    io = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.arange(6.0)}, "global_step": 3}
    io.save_checkpoint(state, tmp_path / "a.ckpt")
    copy_file(tmp_path / "a.ckpt", tmp_path / "b.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()
    loaded = torch.load(tmp_path / "b.ckpt", weights_only=True)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.arange(6.0))
