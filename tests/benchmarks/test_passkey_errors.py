"""benchmarks/passkey_errors.py: naming where a wrong first answer token comes from, and a run on a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import passkey_errors  # noqa: E402

from mm_lightning import tokenizer as tokenizer_lib  # noqa: E402
from mm_lightning.eval.passkey import INTRO, QUESTION, build_passkey_prompt  # noqa: E402


def test_a_miss_is_named_by_where_the_token_it_copies_sits(demo_sotu) -> None:
    tokenizer = tokenizer_lib.load_tokenizer(demo_sotu / "tokenizer.json")
    prompt = build_passkey_prompt(tokenizer, 200, depth=0.5, passkey="48213")
    intro, question = (len(tokenizer_lib.encode(tokenizer, text)) for text in (INTRO, QUESTION))
    cue = prompt.token_ids[-1]
    after = {prompt.token_ids[i + 1] for i in range(len(prompt.token_ids) - 1) if prompt.token_ids[i] == cue}
    assert prompt.answer_ids[0] in after and len(after) >= 3  # the key, and the intro's and question's words

    def source(text: str) -> str:
        return passkey_errors.miss_source(tokenizer, prompt, tokenizer.token_to_id(text), intro, question)

    assert source("Ġnumber").endswith("after the intro's 'er'")
    assert source("Ġholds").endswith("after the question's 'er'")
    assert source("ĠThe") == "copies 'ĠThe' from elsewhere in the prompt"
    number = next(token for token, i in sorted(tokenizer.get_vocab().items())
                  if token.lstrip("Ġ")[:1].isdigit() and i not in prompt.token_ids)  # fmt: skip
    assert source(number) == "a number not in the prompt"


@pytest.mark.slow
def test_a_checkpoint_is_diagnosed_per_length(tiny_checkpoints) -> None:
    result = passkey_errors.main(["--ckpt", str(tiny_checkpoints["text"]), "--lengths", "128", "--prompts", "10"])
    found = result["lengths"][128]
    assert len(found["by_depth"]) == passkey_errors.DEPTH_BINS and 0 <= found["first_token"] <= 1
    assert 0 <= found["accuracy"] <= found["first_token"]  # a passkey passes only with its first token right
    misses = sum(found["misses"].values())
    assert misses == round((1 - found["first_token"]) * 10)  # every miss is named once


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_text("no")
    with pytest.raises(SystemExit):
        passkey_errors.main(["--ckpt", str(bad)])
    assert "x.ckpt" in capsys.readouterr().err
