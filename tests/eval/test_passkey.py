"""Passkey retrieval: prompt construction (length, needle depth, answer) and scoring tiny models on CPU."""

from __future__ import annotations

import pytest
import torch

from mm_lightning.eval.passkey import (
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    VIDEO_QUESTION,
    build_passkey_prompt,
    build_video_passkey,
    passkey_accuracy,
    passkey_metrics,
    video_passkey_accuracy,
)
from mm_lightning.tokenizer import decode, train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = [INTRO, *FILLER, NEEDLE.format(key=12345), QUESTION, VIDEO_QUESTION] * 3
    return train_bpe_tokenizer(texts, vocab_size=320)


@pytest.mark.parametrize("length", [120, 500, 2000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_has_the_requested_length_and_depth(tok, length, depth):
    prompt = build_passkey_prompt(tok, length, depth, seed=7)
    assert len(prompt.token_ids) == length
    text = decode(tok, prompt.token_ids)
    assert text.startswith(INTRO) and text.endswith(QUESTION)
    needle = decode(tok, prompt.token_ids[prompt.needle_start : prompt.needle_end])
    assert needle == NEEDLE.format(key=prompt.passkey) and len(prompt.passkey) == 5
    filler_start, filler_len = len(tok.encode(INTRO).ids), length - len(tok.encode(INTRO + QUESTION).ids)
    filler_len -= prompt.needle_end - prompt.needle_start
    achieved = (prompt.needle_start - filler_start) / filler_len
    assert abs(achieved - depth) <= 8 / filler_len  # the nearest sentence start
    assert decode(tok, prompt.answer_ids) == " " + prompt.passkey


def test_prompts_are_seeded_and_too_short_lengths_refused(tok):
    assert build_passkey_prompt(tok, 300, 0.5, seed=1) == build_passkey_prompt(tok, 300, 0.5, seed=1)
    assert build_passkey_prompt(tok, 300, 0.5, seed=1).passkey != build_passkey_prompt(tok, 300, 0.5, seed=2).passkey
    assert build_passkey_prompt(tok, 300, passkey="424242").passkey == "424242"
    with pytest.raises(ValueError, match="too short"):
        build_passkey_prompt(tok, 10)


def test_passkey_accuracy_on_the_tiny_llm(tok):
    from mm_lightning.models.registry import build_backbone

    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", n_layers=1)
    accuracy = passkey_accuracy(llm, tok, [128, 256], depths=(0.2, 0.8))
    assert set(accuracy) == {128, 256} and all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert llm.training  # the mode is given back
    assert passkey_metrics(accuracy) == {"val/passkey@128": accuracy[128], "val/passkey@256": accuracy[256]}


def test_passkey_accuracy_counts_a_model_that_answers(tok):
    class Oracle(torch.nn.Module):
        """Always predicts the digits of the first passkey after the prompt: right at one length only."""

        def __init__(self, answer: list[int]):
            super().__init__()
            self.answer, self.weight = answer, torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, kv_cache=None, **_):
            step = kv_cache["step"] if kv_cache is not None else 0
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 400)
            logits[:, -1, self.answer[min(step, len(self.answer) - 1)]] = 1.0
            if kv_cache is not None:
                kv_cache["step"] += 1
            return logits

        def new_kv_cache(self, batch, max_len):
            return {"step": 0}

    prompt = build_passkey_prompt(tok, 150, 0.5, seed=0)
    accuracy = passkey_accuracy(Oracle(prompt.answer_ids), tok, [150, 200], depths=(0.5,))
    assert accuracy == {150: 1.0, 200: 0.0}


def test_video_passkey_hides_one_number_frame(tok):
    prompt = build_video_passkey(tok, num_frames=12, depth=0.5, seed=3, max_patches_per_frame=16)
    sample = prompt.sample
    assert prompt.needle_frame == 6 and len(prompt.passkey) == 3 and len(sample.images) == 12
    assert sample.token_ids.count(2) == 12 and decode(tok, sample.token_ids[36:]) == VIDEO_QUESTION
    assert sample.loss_mask[-1] is False and sample.loss_mask[0] is True
    patches = [p for p, _ in sample.images]
    distinct = [(patches[i] - patches[i - 1]).abs().mean().item() for i in range(1, 12)]
    assert max(range(11), key=distinct.__getitem__) in (5, 6)  # the needle frame stands out from its neighbours


def test_video_passkey_accuracy_on_the_tiny_vlm(tok):
    from mm_lightning.models.vlm import build_vlm

    torch.manual_seed(0)
    accuracy = video_passkey_accuracy(build_vlm(), tok, [6], depths=(0.5,), max_patches_per_frame=16)
    assert set(accuracy) == {6} and 0.0 <= accuracy[6] <= 1.0


def test_passkey_callback_logs_each_validation_and_the_starting_one(tok):
    from types import SimpleNamespace

    from mm_lightning.callbacks import PasskeyEvaluation
    from mm_lightning.models.vlm import build_vlm

    torch.manual_seed(0)
    vlm, reported = build_vlm(), []
    module = SimpleNamespace(llm=vlm.llm, vlm=vlm, report_validation=lambda m, headline: reported.append((m, headline)))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=tok))
    PasskeyEvaluation(lengths=[128], frame_counts=[4], depths=(0.5,)).on_validation_epoch_end(trainer, module)
    ((metrics, headline),) = reported
    assert set(metrics) == {"val/passkey@128", "val/passkey_video@4"} and headline == "val/passkey@128"
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    with pytest.raises(ValueError, match="tokenizer"):
        PasskeyEvaluation().on_validation_epoch_end(SimpleNamespace(datamodule=None), module)
