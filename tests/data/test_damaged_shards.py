"""Damaged prepared data is one ``DataError`` line naming the data and what to do: a truncated or overwritten chunk
(litdata's own message blames a download), and token ids outside the model's vocabulary (an IndexError deep in the
embedding)."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import lightning.pytorch as pl
import pytest

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data import ImageTextDataModule, TextDataModule
from mm_lightning.data.streaming import find_damaged_chunk
from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene
from mm_lightning.errors import DataError, run_command
from mm_lightning.prep.image_text import prepare_image_text_shards
from mm_lightning.prep.text import prepare_text_shards
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage

VOCAB = 300


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_shards")
    rng = random.Random(0)
    docs = [" ".join(rng.choices(["alpha", "beta", "gamma", "delta"], k=rng.randint(5, 30))) for _ in range(120)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_text_shards([root / "corpus.jsonl"], root / "out", vocab_size=VOCAB, val_fraction=0.2, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image_shards")
    (root / "raw").mkdir()
    rows = []
    for i in range(10):
        scene = generate_scene(SceneConfig(vocab_size=16), "train", i)
        render_scene(scene).save(root / "raw" / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": scene.caption}))
    (root / "raw" / "captions.jsonl").write_text("\n".join(rows) + "\n")
    tokenizer_lib.train_bpe_tokenizer(rows, vocab_size=VOCAB, out_path=root / "raw" / "tokenizer.json")
    prepare_image_text_shards([root / "raw"], root / "out", val_fraction=0.25, num_workers=1, progress=False,
                              tokenizer=root / "raw" / "tokenizer.json")  # fmt: skip
    return root / "out"


def copy(prepared: Path, tmp_path: Path) -> Path:
    shutil.copytree(prepared, tmp_path / "data")
    return tmp_path / "data"


def train_chunk(data: Path) -> Path:
    return data / "train" / json.loads((data / "train" / "index.json").read_text())["chunks"][0]["filename"]


def truncate(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])


def overwrite_header(chunk: Path) -> None:
    data = chunk.read_bytes()
    chunk.write_bytes(random.Random(1).randbytes(64) + data[64:])


def check_message(error: DataError, data: Path) -> None:
    message = str(error)
    assert str(data / "train") in message and "corrupt" in message and "\n" not in message
    assert f"mm-lightning prepare ... --output {data} --overwrite" in message


def test_prepared_splits_are_whole(text_shards: Path, image_shards: Path) -> None:
    for data in (text_shards, image_shards):
        assert find_damaged_chunk(data / "train") is None and find_damaged_chunk(data / "val") is None


def test_a_truncated_chunk_is_refused_at_setup(text_shards: Path, tmp_path: Path) -> None:
    data = copy(text_shards, tmp_path)
    truncate(train_chunk(data))
    with pytest.raises(DataError, match="has [0-9]+ bytes where index.json records [0-9]+") as error:
        TextDataModule(str(data), seq_len=16, batch_size=2).setup("fit")
    check_message(error.value, data)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_chunk_truncated_after_setup_fails_the_loader_in_one_line(
    text_shards: Path, tmp_path: Path, num_workers: int
) -> None:
    data = copy(text_shards, tmp_path)
    dm = TextDataModule(str(data), seq_len=16, batch_size=2, num_workers=num_workers)
    dm.setup("fit")
    truncate(train_chunk(data))
    with pytest.raises(DataError) as error:  # litdata waits for the rest of the chunk, then blames a download
        next(iter(dm.train_dataloader()))
    check_message(error.value, data)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_overwritten_chunk_fails_the_loader_in_one_line(
    image_shards: Path, tmp_path: Path, num_workers: int
) -> None:
    data = copy(image_shards, tmp_path)
    dm = ImageTextDataModule(str(data), batch_size=2, num_workers=num_workers)
    dm.setup("fit")
    overwrite_header(train_chunk(data))
    with pytest.raises(DataError, match="header that does not match index.json") as error:
        next(iter(dm.train_dataloader()))
    check_message(error.value, data)


def test_a_failure_outside_chunk_reading_keeps_its_own_error(image_shards: Path) -> None:
    dm = ImageTextDataModule(str(image_shards), batch_size=2)
    dm.setup("fit")
    dm.collate_fn = lambda: lambda items: 1 / 0  # a bug, not the data's fault
    with pytest.raises(ZeroDivisionError):
        next(iter(dm.train_dataloader()))


def write_token_ids(data: Path, token_id: int) -> None:
    """Replace every token of every chunk with ``token_id``, keeping the chunks' headers and sizes."""
    for split in ("train", "val"):
        for chunk in json.loads((data / split / "index.json").read_text())["chunks"]:
            path, header = data / split / chunk["filename"], 4 * (chunk["chunk_size"] + 2)
            tokens = (path.stat().st_size - header) // 2
            path.write_bytes(path.read_bytes()[:header] + struct.pack("<H", token_id) * tokens)


def test_token_ids_outside_the_vocabulary_stop_training_in_one_line(
    text_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy(text_shards, tmp_path)
    write_token_ids(data, 4000)
    micro = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": VOCAB}
    stage = TextPretrainStage(llm="tiny", llm_overrides=micro, schedule=LRSchedule(warmup_steps=1, total_steps=2))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=tmp_path)  # fmt: skip
    datamodule = TextDataModule(str(data), seq_len=16, batch_size=2)
    assert run_command("mm-lightning fit", lambda: trainer.fit(stage, datamodule=datamodule)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mm-lightning fit: error: token id 4000 in a batch of ")
    assert str(data) in err and f"vocab_size {VOCAB}" in err and "tokenizer" in err
