"""Tokenizer and text data preparation: lossless round trips, bad records, refused inputs, the CLI."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from litdata import StreamingDataset, TokensLoader

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.prep.text import TextPrepError, prepare_text_shards

REPO = Path(__file__).resolve().parents[2]
WORDS = "the of state union congress year nation peace war law people trade ¿qué? naïve 東京 🙂 tab\t new\nline".split(
    " "
)
TRICKY = [
    "",
    " leading space",
    "trailing  ",
    "a\r\nb\n\n\tc",
    "émoji 🙂 中文 \x00",
    "<|endoftext|> quoted",
    "<|image|>",
]


def random_docs(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct documents of random words (unicode, tabs, newlines included)."""
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 60))) for i in range(n)]


def write_mixed_corpus(root: Path, docs: list[str]) -> None:
    """Spread ``docs`` over every supported format, in nested folders."""
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text(docs[0], encoding="utf-8")
    with gzip.open(root / "nested" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(docs[1])
    (root / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[2:12]), encoding="utf-8")
    with gzip.open(root / "nested" / "deeper" / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[12:24]))
    pq.write_table(pa.table({"text": docs[24:]}), root / "nested" / "e.parquet")
    (root / "README.md").write_text("not a corpus file", encoding="utf-8")


def read_documents(split_dir: Path, tok) -> list[str]:
    """Decode a written split back into documents, split at the end-of-document token."""
    dataset = StreamingDataset(str(split_dir), item_loader=TokensLoader(block_size=1))
    tokens = torch.cat([dataset[i] for i in range(len(dataset))]).long().tolist()
    assert tokens[-1] == tokenizer_lib.eod_id(tok)
    docs, current = [], []
    for token in tokens:
        if token == tokenizer_lib.eod_id(tok):
            docs.append(tokenizer_lib.decode(tok, current))
            current = []
        else:
            current.append(token)
    return docs


def test_tokenizer_special_ids_and_lossless_round_trip(tmp_path: Path) -> None:
    tok = tokenizer_lib.train_bpe_tokenizer(random_docs(50) + TRICKY, vocab_size=400, out_path=tmp_path / "t.json")
    for tokenizer in (tok, tokenizer_lib.load_tokenizer(tmp_path / "t.json")):
        assert [tokenizer.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
        assert tokenizer_lib.eod_id(tokenizer) == 0
        for text in TRICKY + random_docs(5, seed=1) + ["never seen: Ωμέγα ∑ 🚀"]:
            ids = tokenizer_lib.encode(tokenizer, text)
            assert tokenizer_lib.decode(tokenizer, ids) == text
            assert not set(ids) & set(range(5)), "special-token strings in a text must stay plain text"


def test_load_tokenizer_refuses_missing_special_tokens(tmp_path: Path) -> None:
    tok = tokenizer_lib.build_empty_tokenizer()
    tok.save(str(tmp_path / "plain.json"))
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        tokenizer_lib.load_tokenizer(tmp_path / "plain.json")


def test_shards_decode_back_to_every_document_once(tmp_path: Path) -> None:
    docs = random_docs(40)
    write_mixed_corpus(tmp_path / "corpus", docs)
    inputs = [tmp_path / "corpus", tmp_path / "corpus" / "c.jsonl"]  # a file reached twice is read once
    summary = prepare_text_shards(inputs, tmp_path / "out", vocab_size=400, progress=False)
    tok = tokenizer_lib.load_tokenizer(tmp_path / "out" / "tokenizer.json")
    train, val = (read_documents(tmp_path / "out" / split, tok) for split in ("train", "val"))
    assert Counter(train + val) == Counter(docs)
    assert len(val) >= 1 and len(train) >= 1
    assert summary["files"] == 5 and summary["documents"] == 40 and summary["skipped"] == {}
    assert summary["splits"]["val"]["documents"] == len(val)
    assert summary["tokens"] == sum(len(tokenizer_lib.encode(tok, d)) + 1 for d in docs)
    assert json.loads((tmp_path / "out" / "prep_summary.json").read_text()) == summary


def test_split_is_deterministic_and_tokenizer_can_be_given(tmp_path: Path) -> None:
    docs = random_docs(200, seed=3)
    (tmp_path / "corpus").mkdir()
    for i in range(4):
        (tmp_path / "corpus" / f"part{i}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[i::4]))
    first = prepare_text_shards(
        [tmp_path / "corpus"], tmp_path / "one", vocab_size=300, text_field="body", val_fraction=0.1, num_workers=1
    )
    second = prepare_text_shards(
        [tmp_path / "corpus"],
        tmp_path / "two",
        tokenizer=tmp_path / "one" / "tokenizer.json",
        text_field="body",
        val_fraction=0.1,
        num_workers=2,
        progress=False,
    )
    tok = tokenizer_lib.load_tokenizer(tmp_path / "one" / "tokenizer.json")
    val_one, val_two = (set(read_documents(tmp_path / out / "val", tok)) for out in ("one", "two"))
    assert val_one == val_two and 5 <= len(val_one) <= 40

    def without_chunks(splits: dict) -> dict:  # chunks follow the worker count; documents and tokens do not
        return {split: {k: v for k, v in stats.items() if k != "chunks"} for split, stats in splits.items()}

    assert without_chunks(first["splits"]) == without_chunks(second["splits"])


def test_small_chunks_keep_every_document(tmp_path: Path) -> None:
    # short runs mix only the chunks they visit: chunk size is a knob, and small chunks lose nothing
    docs = random_docs(120, seed=7)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    summary = prepare_text_shards([tmp_path / "c.jsonl"], tmp_path / "out", vocab_size=300, num_workers=1,
                                  chunk_tokens=256, progress=False)  # fmt: skip
    train = summary["splits"]["train"]
    assert train["chunks"] == len(list((tmp_path / "out" / "train").glob("chunk-*.bin")))
    assert train["chunks"] >= train["tokens"] // 256 - 1 >= 3
    tok = tokenizer_lib.load_tokenizer(tmp_path / "out" / "tokenizer.json")
    written = [doc for split in ("train", "val") for doc in read_documents(tmp_path / "out" / split, tok)]
    assert Counter(written) == Counter(docs)
    with pytest.raises(TextPrepError, match="chunk_tokens must be positive"):
        prepare_text_shards([tmp_path / "c.jsonl"], tmp_path / "o2", vocab_size=300, chunk_tokens=0)


def test_one_file_is_shared_between_workers(tmp_path: Path) -> None:
    docs = random_docs(200, seed=5)
    (tmp_path / "all.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    summary = prepare_text_shards([tmp_path / "all.jsonl"], tmp_path / "out", vocab_size=300, num_workers=2)
    assert len(list((tmp_path / "out" / "train").glob("chunk-*.bin"))) == 2  # one per worker
    tok = tokenizer_lib.load_tokenizer(tmp_path / "out" / "tokenizer.json")
    written = [doc for split in ("train", "val") for doc in read_documents(tmp_path / "out" / split, tok)]
    assert Counter(written) == Counter(docs)
    assert summary["documents"] == 200


@pytest.mark.parametrize("val_fraction", [0.0, 0.999])
def test_both_splits_get_a_document(tmp_path: Path, val_fraction: float) -> None:
    (tmp_path / "two.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n')
    summary = prepare_text_shards([tmp_path / "two.jsonl"], tmp_path / "out", vocab_size=300, val_fraction=val_fraction)
    assert [summary["splits"][s]["documents"] for s in ("train", "val")] == [1, 1]


def test_bad_records_are_skipped_counted_and_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("a good document", encoding="utf-8")
    (corpus / "latin1.txt").write_bytes("first line\ncaf\xe9 au lait".encode("latin-1"))
    lines = ['{"text": "kept one"}', '{"text": oops', '{"other": 1}', "", '{"text": 5}', '{"text": ""}']
    lines += ['["not", "an", "object"]', b'{"text": "caf\xe9"}'.decode("latin-1"), '{"text": "kept two"}']
    (corpus / "records.jsonl").write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    messages: list[str] = []
    summary = prepare_text_shards([corpus], tmp_path / "out", vocab_size=300, progress=False, report=messages.append)
    assert summary["documents"] == 3
    assert summary["skipped"] == {"empty": 1, "invalid_utf8": 2, "malformed_json": 1, "missing_text": 3}
    reported = "\n".join(messages)
    for where in ("latin1.txt:2", "records.jsonl:2", "records.jsonl:3", "records.jsonl:5", "records.jsonl:8"):
        assert where in reported
    splits = summary["splits"]
    assert sum(sum(splits[s]["skipped"].values()) for s in splits) == 7


def load_script(name: str):
    """Import a ``data_prep/`` script as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_strict_fails_cleanly(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text('{"text": "fine"}\n{"text": broken\n{"text": "fine too"}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO / "data_prep" / "prepare_text.py"), str(corpus), "-o", str(tmp_path / "out")]
    strict = subprocess.run([*command, "--strict", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert strict.returncode != 0
    assert "a.jsonl:2" in strict.stderr and "malformed JSON" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_cli_summary_and_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli = load_script("prepare_text")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in random_docs(10)))
    assert (
        cli.main([str(tmp_path / "corpus.jsonl"), "-o", str(tmp_path / "out"), "--vocab-size", "300", "--quiet"]) == 0
    )
    out = capsys.readouterr().out
    assert "Prepared 10 documents" in out and "val" in out
    assert cli.main([str(tmp_path / "nope"), "-o", str(tmp_path / "out2")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["empty_folder", "empty_files", "no_supported_files", "missing_path"])
def test_inputs_without_documents_are_refused(tmp_path: Path, layout: str) -> None:
    corpus = tmp_path / "corpus"
    if layout != "missing_path":
        corpus.mkdir()
    if layout == "empty_files":
        (corpus / "a.txt").write_text("")
        (corpus / "blank.txt").write_text(" \n\n")
        (corpus / ".hidden.txt").write_text("hidden files are not read")
        (corpus / "b.jsonl").write_text("\n\n")
    if layout == "no_supported_files":
        (corpus / "notes.md").write_text("text in an unsupported format")
    with pytest.raises(TextPrepError, match=re.escape(str(corpus))):
        prepare_text_shards([corpus], tmp_path / "out", vocab_size=300, progress=False)
    assert not (tmp_path / "out" / "train").exists()


def test_prepared_output_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in random_docs(4)))
    prepare_text_shards([tmp_path / "c.jsonl"], tmp_path / "out", vocab_size=300, progress=False)
    with pytest.raises(TextPrepError, match="--overwrite"):
        prepare_text_shards([tmp_path / "c.jsonl"], tmp_path / "out", vocab_size=300, progress=False)
    summary = prepare_text_shards([tmp_path / "c.jsonl"], tmp_path / "out", vocab_size=300, overwrite=True)
    assert summary["documents"] == 4


def test_fetch_script_reproduces_the_committed_demo_corpus() -> None:
    fetch = load_script("fetch_sotu_demo")
    committed = (REPO / "mm_lightning" / "demo" / "assets" / "sotu" / "sotu.jsonl.gz").read_bytes()
    payload = gzip.decompress(committed)
    records = [json.loads(line) for line in payload.decode("utf-8").splitlines()]
    assert len(records) == 233
    assert fetch.build_jsonl(records) == payload
    assert fetch.gzip_bytes(payload, mtime=0) == committed
