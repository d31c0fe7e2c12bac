"""`mm-lightning prepare chat`: the messages formats (OpenAI parts, <image> placeholders with a top-level images list,
ShareGPT, data URLs), bad records reported with file and line, skipped and counted, --strict, the output checks,
and the prepared folder read back by ChatDataModule."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import pytest
from litdata import StreamingDataset
from PIL import Image

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.chat import message, messages_from_json
from mm_lightning.cli import main
from mm_lightning.data import ChatDataModule
from mm_lightning.media.interleave import unpack_blobs
from mm_lightning.prep.chat import SKIP_REASONS, BadConversation, parse_conversation, read_image_bytes

REPO = Path(__file__).resolve().parents[2]


def image_bytes(width: int, height: int, fmt: str = "PNG", colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, fmt)
    return buffer.getvalue()


def user(*content) -> dict:
    return {"role": "user", "content": list(content) if len(content) > 1 or not isinstance(content[0], str)
            else content[0]}  # fmt: skip


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


DATA_URL = "data:image/png;base64," + base64.b64encode(image_bytes(20, 20, colour=(0, 0, 255))).decode()
GOOD = [  # (record, the messages it parses to)
    ({"messages": [user({"type": "image", "image": "images/a.png"}, text("What colour?")),
                   {"role": "assistant", "content": [text("red")]}]},
     [message("user", 0, "What colour?"), message("assistant", "red")]),
    ({"messages": [user("<image>Is there a bee?"), answer("no")], "images": ["images/b.jpg"]},
     [message("user", 0, "Is there a bee?"), message("assistant", "no")]),
    ({"conversations": [{"from": "human", "value": "<image>\nWhat is wide?"}, {"from": "gpt", "value": "it"}],
      "image": "images/big.png"},
     [message("user", 0, "\nWhat is wide?"), message("assistant", "it")]),
    ({"messages": [user("Compare them."), answer("same")], "images": ["images/a.png", "images/c.bmp"]},
     [message("user", 0, 1, "Compare them."), message("assistant", "same")]),
    ({"messages": [user({"type": "image_url", "image_url": {"url": DATA_URL}}, text("Colour?")), answer("blue")]},
     [message("user", 0, "Colour?"), message("assistant", "blue")]),
    ({"messages": [{"role": "system", "content": "Be brief."}, user("Hi"), answer("Hello"), user("Bye"),
                   answer("Bye")]},
     [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello"), message("user", "Bye"),
      message("assistant", "Bye")]),
    ({"messages": [user(text("First"), {"type": "image"}, text("then")), answer("ok")], "images": ["images/a.png"]},
     [message("user", "First", 0, "then"), message("assistant", "ok")]),
]  # fmt: skip
BAD = [  # (line, reason as reported)
    ("{not json", "malformed JSON"),
    (json.dumps({"messages": [{"role": "tool", "content": "x"}, answer("y")]}), "unknown role"),
    (json.dumps({"messages": [user("only a question")]}), "no assistant turn"),
    (json.dumps({"messages": [user({"type": "image", "image": "images/nope.png"}), answer("x")]}),
     "image file missing"),
    (json.dumps({"messages": [user({"type": "image", "image": "images/fake.png"}), answer("x")]}),
     "unreadable or undecodable image"),
    (json.dumps({"messages": [user("<image> and <image>"), answer("x")], "images": ["images/a.png"]}),
     "images and <image> placeholders disagree"),
    (json.dumps({"messages": [user("q"), answer("   ")]}), "empty assistant answer"),
    (json.dumps({"messages": [user("q"), {"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}]}),
     "image outside a user turn"),
    (json.dumps({"messages": "hello"}), "not a conversation"),
]  # fmt: skip
OTHER = [{"messages": [user(f"Question {i}?"), answer(f"answer {i}")]} for i in range(3)]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "chats"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(image_bytes(40, 30))
    (root / "images" / "b.jpg").write_bytes(image_bytes(33, 51, "JPEG"))
    (root / "images" / "big.png").write_bytes(image_bytes(700, 100))
    (root / "images" / "c.bmp").write_bytes(image_bytes(16, 16, "BMP"))
    (root / "images" / "fake.png").write_bytes(b"not a png")
    lines = (
        [json.dumps(record) for record, _ in GOOD[:4]]
        + [line for line, _ in BAD]
        + [json.dumps(record) for record, _ in GOOD[4:]]
    )
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n\n")
    (root / "more" / "other.jsonl").parent.mkdir()
    (root / "more" / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OTHER))
    (root / "notes.txt").write_text("not a conversation file")
    return root


@pytest.fixture
def tok_path(tmp_path: Path) -> Path:
    path = tmp_path / "tok.json"
    tokenizer_lib.train_bpe_tokenizer(["User: Assistant: colour red blue"] * 8, vocab_size=300, out_path=path)
    return path


def prepare(*args: str) -> int:
    with pytest.raises(SystemExit) as stop:
        main(["prepare", "chat", *args, "--quiet", "--num-workers", "1"])
    return stop.value.code


def read_records(out: Path) -> list[dict]:
    records = []
    for split in ("train", "val"):
        dataset = StreamingDataset(str(out / split))
        records += [dataset[i] for i in range(len(dataset))]
    return records


@pytest.mark.parametrize(("record", "expected"), GOOD)
def test_each_format_parses_to_the_same_messages(record: dict, expected: list):
    messages, refs = parse_conversation(record)
    assert messages == expected and len(refs) == sum(len(m.images) for m in expected)


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_records_are_named_by_their_reason(line: str, reason: str):
    record = json.loads(line) if not line.startswith("{not") else None
    if reason in ("image file missing", "unreadable or undecodable image"):
        parse_conversation(record)  # found when its image is read, not when the record is parsed
        return
    with pytest.raises(BadConversation) as bad:
        parse_conversation(record)
    assert SKIP_REASONS[bad.value.reason] == reason or reason == "malformed JSON"


def test_good_and_bad_records_end_to_end_through_the_cli(inputs, tok_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare(str(inputs), "-o", str(out), "--tokenizer", str(tok_path), "--val-fraction", "0.3") == 0
    printed = capsys.readouterr()
    summary = json.loads((out / "prep_summary.json").read_text())
    assert summary["conversations"] == len(GOOD) + len(OTHER) and summary["files"] == 2
    assert sum(summary["skipped"].values()) == len(BAD) == len(summary["skipped"])
    assert all(summary["splits"][s]["conversations"] >= 1 for s in ("train", "val"))
    chat_file = inputs / "chat.jsonl"
    for number, (_, reason) in enumerate(BAD, start=5):  # the bad lines follow the first four good ones
        assert f"{chat_file}:{number}: {reason}" in printed.err, (number, reason, printed.err)
    assert f"Prepared {len(GOOD) + len(OTHER)} conversations from 2 file(s)" in printed.out
    assert "skipped: " in printed.out and "1 malformed_json" in printed.out
    assert (out / "tokenizer.json").is_file()

    records = {json.loads(r["messages"])[-1]["content"][0]["text"]: r for r in read_records(out)}
    for record, expected in GOOD:
        stored = records[expected[-1].text]
        assert messages_from_json(json.loads(stored["messages"])) == expected
        images = [Image.open(io.BytesIO(blob)) for blob in unpack_blobs(stored["images"])]
        assert len(images) == sum(len(m.images) for m in expected)
        assert all(max(image.size) <= 512 and image.format in ("PNG", "JPEG") for image in images)
    assert Image.open(io.BytesIO(unpack_blobs(records["it"]["images"])[0])).size == (512, 73)  # resized
    assert unpack_blobs(records["red"]["images"])[0] == (inputs / "images" / "a.png").read_bytes()  # kept as is
    assert records["same"]["source"].startswith("chat.jsonl:")

    data = ChatDataModule(str(out), batch_size=2, seq_len=128, max_patches=16, seed=0)
    data.setup("fit")
    assert len(data.train_dataset) + len(data.val_dataset) == len(GOOD) + len(OTHER)
    assert {p.answer for p in data.val_conversations()} <= {m.text for _, e in GOOD for m in e} | {
        f"answer {i}" for i in range(3)
    }  # fmt: skip
    assert set(next(iter(data.train_dataloader()))) >= {"input_ids", "labels", "seq_ids", "position_ids"}


def test_strict_stops_at_the_first_bad_record_in_one_line(inputs, tmp_path, capsys):
    assert prepare(str(inputs / "chat.jsonl"), "-o", str(tmp_path / "out"), "--strict") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{inputs / 'chat.jsonl'}:5: malformed JSON" in err and "--strict" in err
    assert not (tmp_path / "out").exists()


def test_an_occupied_or_remote_output_or_nothing_usable_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare(str(inputs / "more"), "-o", str(out)) == 0
    assert prepare(str(inputs / "more"), "-o", str(out)) == 2
    assert "already holds prepared data" in capsys.readouterr().err
    assert prepare(str(inputs / "more"), "-o", str(out), "--overwrite") == 0
    assert prepare(str(inputs / "more"), "-o", "s3://bucket/chat") == 2
    assert "the output s3://bucket/chat is a URL" in capsys.readouterr().err
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("\n".join(line for line, _ in BAD) + "\n")
    assert prepare(str(only_bad), "-o", str(tmp_path / "none")) == 2
    assert "no usable conversations" in capsys.readouterr().err


def test_the_prepare_script_and_the_help(inputs, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_chat", REPO / "data_prep" / "prepare_chat.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(inputs / "more"), "-o", str(tmp_path / "o"), "--quiet", "--num-workers", "1"]) == 0
    assert (tmp_path / "o" / "prep_summary.json").is_file()
    with pytest.raises(SystemExit):
        main(["prepare", "chat", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--output", "--max-side", "--tokenizer", "--val-fraction", "--strict", "--num-workers", "--overwrite"):
        assert flag in help_text


def test_image_sources_read_paths_and_data_urls(tmp_path):
    (tmp_path / "x.png").write_bytes(image_bytes(4, 4))
    assert read_image_bytes(str(tmp_path / "x.png")) == image_bytes(4, 4)
    assert Image.open(io.BytesIO(read_image_bytes(DATA_URL))).size == (20, 20)
    with pytest.raises(ValueError):
        read_image_bytes("data:image/png;base64,@@@")
