"""A tokenizer file that is not a project tokenizer is one line naming the file, wherever a user passes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.cli import main
from mm_lightning.errors import MMLightningError

NOT_TOKENIZERS = {
    "text.json": ("plain words, not JSON", "not JSON"),
    "binary.json": (bytes(range(256)), "not UTF-8"),
    "config.json": ('{"vocab_size": 300}', "not a Hugging Face tokenizers file"),
    "list.json": ("[1, 2, 3]", "not a Hugging Face tokenizers file"),
}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name", sorted(NOT_TOKENIZERS))
def test_load_tokenizer_names_the_file_and_why(tmp_path: Path, name: str) -> None:
    content, why = NOT_TOKENIZERS[name]
    with pytest.raises(tokenizer_lib.TokenizerError) as error:
        tokenizer_lib.load_tokenizer(write(tmp_path / name, content))
    message = str(error.value)
    assert str(tmp_path / name) in message and why in message and "\n" not in message


def test_special_tokens_elsewhere_are_a_user_error(tmp_path: Path) -> None:
    tok = tokenizer_lib.build_empty_tokenizer()
    tok.save(str(tmp_path / "plain.json"))
    with pytest.raises(MMLightningError, match="<\\|endoftext\\|>"):
        tokenizer_lib.load_tokenizer(tmp_path / "plain.json")
    with pytest.raises(MMLightningError, match="s3://bucket/tokenizer.json"):
        tokenizer_lib.tokenizer_from_str(json.dumps(json.loads(tok.to_str())), source="s3://bucket/tokenizer.json")


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one error line of ``mm-lightning ARGV``, which must exit with code 2."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    return err


def test_commands_given_a_bad_tokenizer_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write(tmp_path / "tokenizer.json", "<html>not found</html>")
    (tmp_path / "corpus.txt").write_text("one small document")
    prepare = ["prepare", "text", str(tmp_path / "corpus.txt"), "-o", str(tmp_path / "out"), "--quiet"]
    err = run_cli(capsys, *prepare, "--tokenizer", str(bad))
    assert err.startswith("mm-lightning prepare: error: ") and f"{bad} is not a tokenizer.json" in err
    err = run_cli(capsys, "generate", "--ckpt", str(tmp_path / "any.ckpt"), "--tokenizer", str(bad))
    assert err.startswith("mm-lightning generate: error: ") and f"{bad} is not a tokenizer.json" in err


def test_a_broken_recorded_tokenizer_is_named_not_dumped() -> None:
    """Given a checkpoint's metadata block (as ``mm_lightning.api.Model`` passes it), the error names "the checkpoint"
    instead of printing the block, whose recorded tokenizer alone is ~200 KB of JSON."""
    from mm_lightning.checkpoint import recorded_tokenizer

    meta = {"stage": "TextPretrainStage", "tokenizer": "{truncated", "backbones": {"llm": {"d_model": 8}}}
    with pytest.raises(tokenizer_lib.TokenizerError) as error:
        recorded_tokenizer(meta)
    message = str(error.value)
    assert message.startswith("the tokenizer recorded in the checkpoint is not a tokenizer.json"), message
    assert "backbones" not in message and "TextPretrainStage" not in message


def test_generated_text_never_shows_special_tokens() -> None:
    from tokenizers import AddedToken

    from mm_lightning.chat import answer_text
    from mm_lightning.generation.caption import decode_text

    tok = tokenizer_lib.train_bpe_tokenizer(["a red apple on a blue background"] * 20, vocab_size=300)
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True)])  # as an imported tokenizer may have
    extra = tok.token_to_id("<|begin_of_text|>")
    words = tokenizer_lib.encode(tok, "a red apple")
    spelt = tokenizer_lib.encode(tok, "<|image_start|> x")  # the string in ordinary tokens, not the special id
    ids = [*tokenizer_lib.IMAGE_SPAN * 7, extra, *words, tokenizer_lib.PAD_ID, *spelt]
    assert tokenizer_lib.decode_generated(tok, ids) == "a red apple x"
    assert "<|image_start|>" in tokenizer_lib.decode(tok, ids)  # the lossless decode keeps them
    assert decode_text(tok, [*ids, tokenizer_lib.EOD_ID, *words]) == "a red apple x"  # captions, generate
    assert answer_text(tok, [tokenizer_lib.IMAGE_START_ID, *words, tokenizer_lib.EOD_ID]) == "a red apple"  # chat
