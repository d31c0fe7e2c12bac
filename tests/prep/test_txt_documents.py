"""One's own data as a single .txt: cut into documents (paragraphs grouped, or pieces by size), split by documents."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from litdata import StreamingDataset, TokensLoader

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.errors import run_command
from mm_lightning.prep.cli import main as prepare_main
from mm_lightning.prep.text import TextPrepError, prepare_text_shards
from mm_lightning.prep.text_readers import SourceFile, TxtDocuments, iter_records

WORDS = "the of state union congress year nation peace war law people trade naïve 東京 🙂".split()


def paragraphs(n: int, seed: int = 0) -> list[str]:
    """``n`` paragraphs of one to three lines of random words."""
    rng = random.Random(seed)
    lines = lambda: [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 3))]  # noqa: E731
    return [f"paragraph {i}: " + "\n".join(lines()) for i in range(n)]


def read_documents(split_dir: Path, tok) -> list[str]:
    """A written split's documents, decoded and cut at the end-of-document tokens."""
    dataset = StreamingDataset(str(split_dir), item_loader=TokensLoader(block_size=1))
    tokens = torch.cat([dataset[i] for i in range(len(dataset))]).tolist()
    text = tokenizer_lib.decode(tok, tokens)
    return text.split(tokenizer_lib.EOD_TOKEN)[:-1]


def prepare(*args: str) -> int:
    return run_command("mm-lightning prepare", lambda: prepare_main(["text", *args]))


def records(path: Path, how: TxtDocuments) -> list[tuple]:
    return [tuple(record) for record in iter_records(SourceFile(path, path.name, "txt"), txt=how)]


def test_paragraphs_are_grouped_into_documents_and_long_ones_cut(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("\n\nfirst paragraph\nits second line\n\n \nsecond one\n\nthird, a much longer paragraph\n")
    assert records(path, TxtDocuments("blank-lines", 50)) == [
        (1, 3, "first paragraph\nits second line\n\n \nsecond one\n", None),  # blank lines inside one kept
        (2, 9, "third, a much longer paragraph\n", None),  # with what came before: longer than 50
    ]
    assert [r[1:3] for r in records(path, TxtDocuments("blank-lines", 20))] == [
        (3, "first paragraph\n"), (4, "its second line\n"),  # a paragraph longer than 20: cut at a line end,
        (7, "second one\n"), (9, "third, a much "), (9, "longer paragraph\n"),  # or at a space
    ]  # fmt: skip
    assert records(path, TxtDocuments("blank-lines", 1000))[0][2] == path.read_text().lstrip("\n")
    assert [r[2] for r in records(path, TxtDocuments("size", 20))] == [
        "first paragraph\n", "its second line\n\n \n", "second one\n\n", "third, a much ", "longer paragraph\n",
    ]  # fmt: skip
    assert records(path, TxtDocuments("file")) == [(1, 1, path.read_text(), None)]


def test_a_line_that_is_not_utf8_skips_only_its_document(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good one\n\nbad \xff here\nsame paragraph\n\ngood two\n")
    assert records(path, TxtDocuments("blank-lines", 20)) == [
        (1, 1, "good one\n", None),
        (2, 3, None, "invalid_utf8"),
        (3, 6, "good two\n", None),
    ]
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    assert records(tmp_path / "blank.txt", TxtDocuments()) == [(1, 1, "", "empty")]


def test_one_large_txt_is_a_corpus_split_by_documents(tmp_path: Path) -> None:
    texts = paragraphs(300)
    (tmp_path / "corpus.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    summary = prepare_text_shards([tmp_path / "corpus.txt"], tmp_path / "out", vocab_size=400, val_fraction=0.1,
                                  progress=False, doc_chars=500)  # fmt: skip
    tok = tokenizer_lib.load_tokenizer(tmp_path / "out" / "tokenizer.json")
    train, val = (read_documents(tmp_path / "out" / split, tok) for split in ("train", "val"))
    assert summary["files"] == 1 and summary["documents"] == len(train) + len(val) > 20
    assert 0.03 < len(val) / summary["documents"] < 0.25  # the validation split takes documents of the one file
    assert max(len(doc) for doc in train + val) <= 500
    found = [p for doc in train + val for p in doc.strip("\n").split("\n\n")]
    assert Counter(found) == Counter(texts)  # every paragraph once, whole (none was longer than a document)
    assert summary["txt_documents"] == {"split": "blank-lines", "doc_chars": 500}


def test_a_txt_that_stays_one_document_is_refused_with_what_to_change(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("\n\n".join(paragraphs(5)))
    with pytest.raises(TextPrepError, match="Only one usable document .* --txt-split, --doc-chars"):
        prepare_text_shards([tmp_path / "one.txt"], tmp_path / "out", vocab_size=300, progress=False, txt_split="file")


def test_cli_options_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "corpus.txt").write_text("\n".join(paragraphs(40)))  # no blank line at all: cut by size
    out = tmp_path / "out"
    args = [str(tmp_path / "corpus.txt"), "-o", str(out), "--vocab-size", "300", "--quiet", "--num-workers", "1"]
    assert prepare(*args, "--txt-split", "size", "--doc-chars", "300") == 0
    assert "Prepared" in capsys.readouterr().out
    with pytest.raises(TextPrepError, match="doc_chars must be at least 1"):
        TxtDocuments(doc_chars=0)
    assert prepare(*args, "--overwrite", "--doc-chars", "0") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "doc_chars must be at least 1 character, got 0" in error[0]
