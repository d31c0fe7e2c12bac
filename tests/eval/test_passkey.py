"""Passkey retrieval: prompt construction (length, needle depth, answer), prompt sets (30 distinct keys), scoring
tiny models on CPU, the callback in a stage-1 run, and a template that no demo training document shares."""

from __future__ import annotations

import re
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from litdata import StreamingDataset, TokensLoader

from mm_lightning.callbacks import PasskeyEvaluation
from mm_lightning.data.synthetic import SyntheticTextDataModule
from mm_lightning.demo import demo_folder, demo_names
from mm_lightning.demo.corpora import SOTU, read_corpus
from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene
from mm_lightning.demo.long import LONG_DEMOS, generate_motion_clip
from mm_lightning.eval.passkey import (
    DEFAULT_PROMPTS,
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    VIDEO_QUESTION,
    _last_position_logits,
    build_passkey_prompt,
    build_passkey_prompts,
    build_video_passkey,
    passkey_chance,
    passkey_metrics,
    passkey_scores,
    template_sentences,
    video_passkey_accuracy,
)
from mm_lightning.generation.decode import generate
from mm_lightning.models.registry import build_backbone
from mm_lightning.models.vlm import build_vlm
from mm_lightning.schedules import LRSchedule
from mm_lightning.stages import TextPretrainStage
from mm_lightning.tokenizer import decode, load_tokenizer, train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = [INTRO, *FILLER, NEEDLE.format(key=12345), QUESTION, VIDEO_QUESTION] * 3
    return train_bpe_tokenizer(texts, vocab_size=320)


class Oracle(torch.nn.Module):
    """A causal model that writes the same answer tokens after the question of any prompt: right for the prompts
    whose key they spell.

    At each position it guesses ``answer[k]``, ``k`` tokens after the latest ``end`` token (the question's last),
    so teacher forcing and greedy decoding (its cache keeps the tokens seen) give the same guesses.
    """

    def __init__(self, answer: list[int], end: int):
        super().__init__()
        self.answer, self.end, self.weight = answer, end, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, kv_cache=None, **_):
        seen = torch.cat([kv_cache["ids"], input_ids], 1) if kv_cache is not None else input_ids
        if kv_cache is not None:
            kv_cache["ids"] = seen
        logits = torch.zeros(*input_ids.shape, 400)
        for row, tokens in enumerate(seen.tolist()):
            last = -1
            for position, token in enumerate(tokens):
                last = position if token == self.end else last
                column = position - (len(tokens) - input_ids.shape[1])
                if column >= 0:
                    logits[row, column, self.answer[min(position - last, len(self.answer) - 1)]] = 1.0
        return logits

    def new_kv_cache(self, batch, max_len):
        return {"ids": torch.zeros(batch, 0, dtype=torch.long)}


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
    assert abs(achieved - depth) <= 12 / filler_len  # the nearest sentence start
    assert decode(tok, prompt.answer_ids) == " " + prompt.passkey


def test_prompts_are_seeded_and_too_short_lengths_refused(tok):
    assert build_passkey_prompt(tok, 300, 0.5, seed=1) == build_passkey_prompt(tok, 300, 0.5, seed=1)
    assert build_passkey_prompt(tok, 300, 0.5, seed=1).passkey != build_passkey_prompt(tok, 300, 0.5, seed=2).passkey
    assert build_passkey_prompt(tok, 300, passkey="424242").passkey == "424242"
    with pytest.raises(ValueError, match="too short"):
        build_passkey_prompt(tok, 10)


def test_a_length_gets_thirty_deterministic_prompts_with_distinct_keys_at_spread_depths(tok):
    prompts = build_passkey_prompts(tok, 300)
    assert len(prompts) == DEFAULT_PROMPTS >= 30
    assert len({p.passkey for p in prompts}) == len(prompts) and all(len(p.passkey) == 5 for p in prompts)
    assert all(len(p.token_ids) == 300 for p in prompts)
    starts = [p.needle_start for p in prompts]
    filler_len = 300 - len(tok.encode(INTRO + QUESTION).ids) - (prompts[0].needle_end - prompts[0].needle_start)
    assert starts == sorted(starts) and starts[-1] - starts[0] > 0.8 * filler_len  # shallow to deep
    assert build_passkey_prompts(tok, 300) == prompts  # the same prompts at every validation
    assert {p.passkey for p in build_passkey_prompts(tok, 300, seed=1)}.isdisjoint({p.passkey for p in prompts})
    assert [p.passkey for p in build_passkey_prompts(tok, 400)] != [p.passkey for p in prompts]
    with pytest.raises(ValueError, match="at least 1"):
        build_passkey_prompts(tok, 300, count=0)
    assert passkey_chance() == pytest.approx(1 / 90_000)


def test_passkey_scores_on_the_tiny_llm_are_greedy_decodings(tok):
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", n_layers=1)
    scores = passkey_scores(llm, tok, [128, 256], prompts=4)
    assert set(scores) == {128, 256} and all(0.0 <= s.accuracy <= 1.0 for s in scores.values())
    assert llm.training  # the mode is given back
    accuracy = {n: s.accuracy for n, s in scores.items()}
    assert passkey_metrics(accuracy) == {"val/passkey@128": accuracy[128], "val/passkey@256": accuracy[256]}
    with torch.no_grad():
        llm.eval()
        for length in (128, 256):  # the figure is greedy decoding's, prompt by prompt
            prompts = build_passkey_prompts(tok, length, count=4)
            new = generate(llm, torch.tensor([p.token_ids for p in prompts]), 7, greedy=True)
            hits = [decode(tok, row.tolist()).strip().startswith(p.passkey) for row, p in zip(new, prompts)]
            assert accuracy[length] == sum(hits) / 4


def test_only_the_last_position_is_projected_while_decoding_and_the_tokens_do_not_change(tok):
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", n_layers=1).eval()
    ids = torch.tensor([p.token_ids for p in build_passkey_prompts(tok, 120, count=3)])  # [3, 120]
    reference = generate(llm, ids, 4, greedy=True)
    with _last_position_logits(llm):
        assert llm(input_ids=ids).shape == (3, 1, llm.config.vocab_size)
        assert torch.equal(generate(llm, ids, 4, greedy=True), reference)
    assert llm(input_ids=ids).shape == (3, 120, llm.config.vocab_size)  # the hook is gone


@pytest.mark.parametrize("spelling", ["its tokens", "another spelling"])
def test_passkey_scores_count_a_model_that_answers_whatever_the_batching(tok, spelling):
    first = build_passkey_prompts(tok, 150, count=3)[0]
    space = tok.encode(" ").ids
    # another spelling, two spaces before the key, passes greedy decoding and no teacher-forced guess: it is decoded
    answer = first.answer_ids if spelling == "its tokens" else space + first.answer_ids
    oracle = Oracle(answer, end=tok.encode(QUESTION).ids[-1])
    accuracy = lambda **kw: {n: s.accuracy for n, s in passkey_scores(oracle, tok, prompts=3, **kw).items()}  # noqa: E731
    assert accuracy(lengths=[150, 200]) == {150: pytest.approx(1 / 3), 200: 0.0}
    assert accuracy(lengths=[150], batch_tokens=150) == {150: pytest.approx(1 / 3)}
    first_token = passkey_scores(oracle, tok, [150], prompts=3)[150].first_token
    assert first_token == 1.0  # every key starts with a space token here, which both spellings write first


class NextInput(torch.nn.Module):
    """Guesses, at each position, the token that comes next in its input, except before tokens in ``blind``.

    Fed a prompt followed by its answer, it knows every answer token; blind to the first ones (a space and digits,
    ``"Ġ4"``) it fails the look-up and still "copies" the rest, as a model that matches on one token would.
    """

    def __init__(self, vocab: int, blind: set[int] = frozenset(), instead: int = 5):
        super().__init__()
        self.instead, self.vocab, self.blind = instead, vocab, blind
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.lm_head = torch.nn.Identity()  # so the scorer projects the answer positions only, as on an LLM

    def forward(self, input_ids=None, **_):
        following = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)  # [B, T]
        logits = torch.nn.functional.one_hot(following, self.vocab).float()
        blinded = torch.tensor([[t in self.blind for t in row] for row in following.tolist()])
        logits[..., self.instead] += 2.0 * blinded  # a word, not a read-only id that decoding never writes
        return self.lm_head(logits)


def scores_of(model, tok, length, prompts, **kw):
    score = passkey_scores(model, tok, [length], prompts=prompts, **kw)[length]
    return score.accuracy, score.first_token, score.later_tokens


def test_passkey_scores_tell_the_look_up_from_the_copy(tok):
    prompts = build_passkey_prompts(tok, 200, count=6)
    firsts = {p.answer_ids[0] for p in prompts}
    assert all(len(p.answer_ids) >= 2 for p in prompts)  # each answer has later tokens to copy
    assert scores_of(NextInput(400), tok, 200, 6) == (1.0, 1.0, 1.0)  # passes without decoding
    blind = NextInput(400, firsts - {a for p in prompts for a in p.answer_ids[1:]}, instead=tok.encode(" The").ids[0])
    assert scores_of(blind, tok, 200, 6, batch_tokens=200) == (0.0, 0.0, 1.0)  # its first guess is a word
    torch.manual_seed(0)
    score = passkey_scores(build_backbone("llm", "tiny", n_layers=1), tok, [128], prompts=3)[128]
    assert all(0.0 <= share <= 1.0 for share in (score.accuracy, score.first_token, score.later_tokens))


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
    torch.manual_seed(0)
    accuracy = video_passkey_accuracy(build_vlm(), tok, [6], prompts=1, max_patches_per_frame=16)
    assert set(accuracy) == {6} and 0.0 <= accuracy[6] <= 1.0


def test_passkey_callback_logs_each_validation_and_the_starting_one(tok):
    torch.manual_seed(0)
    vlm, reported = build_vlm(), []
    module = SimpleNamespace(llm=vlm.llm, vlm=vlm, report_validation=lambda m, headline: reported.append((m, headline)))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=tok))
    PasskeyEvaluation(lengths=[128], frame_counts=[4], prompts=2, video_prompts=1).on_validation_epoch_end(
        trainer, module
    )
    ((metrics, headline),) = reported
    assert headline == "val/passkey@128"
    assert set(metrics) == {"val/passkey@128", "val/passkey_chance", "val/passkey_video@4", "val/passkey_video_chance",
                            "val/passkey_first_token@128", "val/passkey_later_tokens@128"}  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["val/passkey_video_chance"] == pytest.approx(1 / 900)
    assert PasskeyEvaluation().prompts == 30
    with pytest.raises(ValueError, match="tokenizer"):
        PasskeyEvaluation().on_validation_epoch_end(SimpleNamespace(datamodule=None), module)
    with pytest.raises(ValueError, match="at least one prompt"):
        PasskeyEvaluation(prompts=0)


def test_passkey_callback_in_a_text_pretraining_run(tok, tmp_path):
    """Stage 1 logs the figure too: its ``llm`` and its datamodule's tokenizer are all the callback needs."""
    micro = {"n_layers": 1, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128, "vocab_size": 384}
    schedule = LRSchedule(peak_lr=1e-3, min_lr=1e-4, warmup_steps=1, total_steps=2)
    stage = TextPretrainStage(llm="tiny", llm_overrides=micro, schedule=schedule)
    data = SyntheticTextDataModule(vocab_size=320, seq_len=32, batch_size=2, num_rows=8)
    data.tokenizer = tok
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, val_check_interval=2, limit_val_batches=1, logger=False,
        num_sanity_val_steps=-1, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
        callbacks=[PasskeyEvaluation(lengths=[128, 160], prompts=3)],
    )  # fmt: skip
    trainer.fit(stage, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"val/passkey@128", "val/passkey@160", "val/passkey_chance", "val/ppl"} <= set(metrics)
    assert all(0.0 <= float(metrics[f"val/passkey@{n}"]) <= 1.0 for n in (128, 160))


# --- the template is the evaluation's own -------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


def _sharing(texts: list[str]) -> dict[str, int]:
    """How many of ``texts`` hold each template sentence (case and line breaks ignored): ``{}`` when none does."""
    sentences = [_normalise(sentence) for sentence in template_sentences()]
    found: dict[str, int] = {}
    for text in map(_normalise, texts):
        for sentence in sentences:
            if sentence in text:
                found[sentence] = found.get(sentence, 0) + 1
    return found


def test_template_sentences_cover_intro_filler_needle_and_question():
    sentences = template_sentences()
    assert "The map is in locker" in sentences and "Which locker holds the map" in sentences
    assert all(sentence.strip(". ") in sentences for sentence in FILLER)
    assert not any(char.isdigit() for sentence in sentences for char in sentence)  # the key is not template


def test_no_demo_training_source_shares_the_template():
    """The addresses (sotu, long-text, long-docs, scene-docs) and the captions of scenes and clips."""
    addresses = [record["text"] for record in read_corpus(SOTU)]
    config = SceneConfig()
    captions = [generate_scene(config, "train", index).caption for index in range(10_000)]
    clips = [generate_motion_clip(config, "train", index, LONG_DEMOS[name]).caption
             for name in ("motion-clips", "motion-clips-long") for index in range(500)]  # fmt: skip
    assert _sharing(addresses + captions + clips) == {}
    assert _sharing([INTRO + FILLER[0] + NEEDLE.format(key=1) + QUESTION]) != {}  # the check itself finds them


@pytest.mark.slow
def test_no_prepared_demo_text_corpus_shares_the_template(mm_cache):
    """Every text demo as the stages stream it (a corpus added later included), and the long text demos."""
    for name in demo_names("text"):
        root = demo_folder(name, "text")
        tokenizer = load_tokenizer(root / "tokenizer.json")
        for split in ("train", "val"):
            stream = StreamingDataset(str(root / split), item_loader=TokensLoader(block_size=64))
            ids = torch.cat([stream[i] for i in range(len(stream))])  # every token but a chunk's last < 64
            assert _sharing([decode(tokenizer, ids.tolist())]) == {}, f"{name} {split}"
    for name, demo in LONG_DEMOS.items():
        if demo.kind == "text":
            root = demo_folder(f"demo:{name}", "long")
            texts = [item["text"] for split in ("train", "val") for item in StreamingDataset(str(root / split))]
            assert texts and _sharing(texts) == {}, name
