"""Every rank gets as many batches of a streamed split, so FSDP2 with validation on does not hang.

The val split here has 41 blocks of 17 tokens: in batches of 2 on 2 ranks litdata gave 10 and 11 batches, and
the rank with one more waited forever in an FSDP all-gather while the other waited in the metric sync.
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from litdata.utilities.env import _DistributedEnv

from mm_lightning.data import TextDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.prep.text import prepare_text_shards

SEQ_LEN, BATCH_SIZE, RANKS = 16, 2, 2
MICRO = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 320}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 short documents, 15% held out, each split in one chunk: 218 train and 41 val blocks of 17 tokens."""
    root = tmp_path_factory.mktemp("uneven_text")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(200)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_text_shards([root / "corpus.jsonl"], root / "out", vocab_size=300, val_fraction=0.15, num_workers=1,
                        progress=False)  # fmt: skip
    return root / "out"


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    """Make litdata split the data as rank ``rank`` of ``RANKS`` does (it reads the process group this way)."""
    monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls: _DistributedEnv(RANKS, rank, 1)))


def rank_rows(prepared: Path, monkeypatch: pytest.MonkeyPatch, rank: int, split: str) -> list[tuple[int, ...]]:
    as_rank(monkeypatch, rank)
    dm = TextDataModule(str(prepared), seq_len=SEQ_LEN, batch_size=BATCH_SIZE)
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    batches = [batch["input_ids"] for batch in loader]
    assert len(batches) == len(loader)
    return [tuple(row.tolist()) for batch in batches for row in batch]


@pytest.mark.parametrize("split", ["val", "train"])
def test_each_rank_reads_as_many_full_batches(prepared, monkeypatch, split):
    blocks = {"train": 218, "val": 41}[split]
    assert blocks % (RANKS * BATCH_SIZE) != 0  # without dropping the remainder the last rank gets one batch more
    rows = [rank_rows(prepared, monkeypatch, rank, split) for rank in range(RANKS)]
    per_rank = blocks // (RANKS * BATCH_SIZE) * BATCH_SIZE
    assert [len(r) for r in rows] == [per_rank] * RANKS
    if split == "val":  # in order: the ranks read disjoint stretches, the first ``per_rank`` blocks each
        monkeypatch.undo()  # one process again
        single = TextDataModule(str(prepared), seq_len=SEQ_LEN, batch_size=BATCH_SIZE)
        single.setup("fit")
        everything = [tuple(row.tolist()) for batch in single.val_dataloader() for row in batch["input_ids"]]
        assert len(everything) == blocks  # one process validates on the whole split
        assert rows[0] + rows[1] == everything[: RANKS * per_rank]


def test_a_split_litdata_cannot_share_evenly_is_refused(prepared, monkeypatch):
    monkeypatch.setenv("LITDATA_POSIX_FAST", "1")  # litdata's whole-chunk split, as on NFS or Lustre
    as_rank(monkeypatch, 0)
    dm = TextDataModule(str(prepared), seq_len=SEQ_LEN, batch_size=BATCH_SIZE)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"into \[109, 0\] batches on the 2 ranks"):
        dm.train_dataloader()  # one train chunk for two ranks


def run_fit(config: Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``mm-lightning fit`` in its own process group, all of it killed when it outlives ``timeout`` (a hang)."""
    cmd = [sys.executable, "-m", "mm_lightning.cli", "fit", "--config", str(config)]
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the rank it started
            process.communicate()
            raise
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def test_fsdp2_on_two_processes_validates_an_uneven_split(prepared, tmp_path):
    """FSDP2 over gloo, a full sanity validation and one after step 2 (~13 s); it hung before the remainder was
    dropped."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": RANKS, "max_steps": 2, "val_check_interval": 2,
            "num_sanity_val_steps": -1, "limit_val_batches": None, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
            "strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                         "init_args": {"data_parallel_size": RANKS, "tensor_parallel_size": 1}},
        },
        "model": {"class_path": "mm_lightning.stages.TextPretrainStage",
                  "init_args": {"llm": "tiny", "llm_overrides": MICRO}},
        "data": {"class_path": "mm_lightning.data.TextDataModule",
                 "init_args": {"data_path": str(prepared), "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE}},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = run_fit(tmp_path / "config.yaml", tmp_path, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "2 ranks x 10 batches of 2 read 40 of its 41 items each pass (1 left out" in output
    assert "before training 0: val/loss" in output and "step 2: val/loss" in output
