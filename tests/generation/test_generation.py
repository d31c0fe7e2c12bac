"""KV-cached decoding and text generation: cache == no cache, chunked prefill, sampling filters, eos."""

import math

import pytest
import torch

from mm_lightning import build_backbone
from mm_lightning.generation.decode import READ_ONLY_IDS, generate, sample_next_token, top_k_filter, top_p_filter
from mm_lightning.ops.attention import attention, prefix_causal_attention

VOCAB = 97


def micro(key_smear: bool | list[bool] = False, smear_lags: int | list[int] = 1):
    """A micro LLM whose greedy continuations vary (untied head, wider init), so equalities are not trivial.

    ``key_smear``: with smeared keys, each gate at a different, large share (0.27-0.73), so the smear shows;
    ``smear_lags``: keys and queries that mix in further lags, each weight different."""
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    llm = build_backbone(
        "llm", "tiny", **fields, tie_embeddings=False, init_std=0.3, key_smear=key_smear, smear_lags=smear_lags
    ).eval()
    if key_smear:
        with torch.no_grad():
            for block in llm.blocks:
                if block.attn.smear_logit is not None:
                    block.attn.smear_logit.copy_(torch.tensor([-1.0, 1.0]))
                for weights in (block.attn.key_lag_weights, block.attn.query_lag_weights):
                    if weights is not None:
                        weights.copy_(torch.linspace(-0.8, 0.9, weights.numel()))
    return llm


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("batch", "prompt_len", "new"), [(1, 1, 12), (3, 5, 8), (2, 17, 20), (4, 3, 1)])
def test_cached_greedy_generation_equals_uncached(batch, prompt_len, new):
    llm = micro()
    ids = prompts(batch, prompt_len, seed=prompt_len)
    cached = generate(llm, ids, new, greedy=True)
    uncached = generate(llm, ids, new, greedy=True, use_cache=False)
    assert cached.shape == (batch, new)
    assert torch.equal(cached, uncached)


def test_cached_sampling_equals_uncached_with_the_same_generator():
    llm = micro()
    ids = prompts(3, 4)
    kwargs = dict(temperature=0.8, top_k=20, top_p=0.9)
    cached = generate(llm, ids, 10, generator=torch.Generator().manual_seed(7), **kwargs)
    uncached = generate(llm, ids, 10, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("key_smear", "smear_lags"), [(False, 1), (True, 1), (True, 3), (True, [1, 3]), ([False, True], [1, 3])]
)
def test_cached_forward_logits_equal_the_full_forward(key_smear, smear_lags):
    llm = micro(key_smear, smear_lags)
    ids = prompts(2, 12)
    cache = llm.new_kv_cache(2, 16)
    with torch.no_grad():
        full = llm(ids)  # [2, 12, V]
        prefill = llm(ids[:, :6], kv_cache=cache)
        chunk = llm(ids[:, 6:10], kv_cache=cache)
        single = llm(ids[:, 10:11], kv_cache=cache)
    torch.testing.assert_close(prefill, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk, full[:, 6:10], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single, full[:, 10:11], atol=1e-5, rtol=1e-5)
    assert cache.length == 11


@pytest.mark.parametrize("key_smear", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 9, [3, 1, 5], [8, 1]])
def test_chunked_prefill_equals_one_shot(chunks, key_smear):
    llm = micro(key_smear)
    ids = prompts(2, sum(chunks))
    one_shot, chunked = llm.new_kv_cache(2, 12), llm.new_kv_cache(2, 12)
    with torch.no_grad():
        expected = llm(ids, kv_cache=one_shot)[:, -1]
        for piece in ids.split(chunks, dim=1):
            last = llm(piece, kv_cache=chunked)[:, -1]
    assert chunked.length == one_shot.length == ids.shape[1]
    torch.testing.assert_close(last, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(one_shot.keys + one_shot.values, chunked.keys + chunked.values, strict=True):
        torch.testing.assert_close(a[:, :, : ids.shape[1]], b[:, :, : ids.shape[1]], atol=1e-5, rtol=1e-5)


def test_prefix_causal_attention_equals_the_last_rows_of_causal_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    full = attention(q, k, v, causal=True, backend="sdpa")
    for new in (1, 3, 10):
        torch.testing.assert_close(prefix_causal_attention(q[:, :, -new:], k, v), full[:, :, -new:])


def test_top_k_one_sampling_equals_greedy():
    llm = micro()
    ids = prompts(3, 5)
    sampled = generate(llm, ids, 8, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, generate(llm, ids, 8, greedy=True))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.10, 0.50, 0.05, 0.35]]).log()
    kept = {p: torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in (0.3, 0.6, 0.9, 1.0)}
    assert kept[0.3] == [False, True, False, False]  # 0.5 alone reaches 0.3
    assert kept[0.6] == [False, True, False, True]  # 0.5 + 0.35
    assert kept[0.9] == [True, True, False, True]  # 0.5 + 0.35 + 0.1
    assert kept[1.0] == [True, True, True, True]
    torch.testing.assert_close(top_p_filter(logits, 0.6)[0, 1], torch.tensor(math.log(0.5)))


def test_top_k_filter_and_nucleus_sampling_stay_in_the_kept_set():
    logits = torch.tensor([[0.10, 0.50, 0.05, 0.35]]).log().expand(500, -1)
    assert torch.isfinite(top_k_filter(logits, 2)[0]).tolist() == [False, True, False, True]
    tokens = sample_next_token(logits, top_p=0.6, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {1, 3}
    assert sample_next_token(logits, greedy=True).unique().tolist() == [1]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_eos_stops_rows_and_pads_them():
    llm = micro()
    ids = prompts(3, 4)
    free = generate(llm, ids, 12, greedy=True)  # [3, 12]
    eos = int(free[0, 0])
    expected = free.clone()
    stop_at = []
    for row in expected:
        hits = (row == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else row.numel()
        row[stop:] = eos
        stop_at.append(stop)
    assert len(set(stop_at)) == 3  # rows stop at once, later, never: the test covers all three
    expected = expected[:, : max(stop_at)]
    for use_cache in (True, False):
        assert torch.equal(generate(llm, ids, 12, greedy=True, eos_id=eos, use_cache=use_cache), expected)


def test_padding_and_image_tokens_are_never_generated():
    """A model that favours ``<|image_start|>`` and its kin (as the demo's stage 5 did after video frames) still writes
    text: the read-only ids are suppressed in greedy and sampled decoding, and only there."""
    llm = micro()
    with torch.no_grad():
        llm.lm_head.weight[list(READ_ONLY_IDS)] *= 20.0
    ids = prompts(6, 5)
    unrestricted = generate(llm, ids, 8, greedy=True, suppress_ids=())
    assert torch.isin(unrestricted, torch.tensor(READ_ONLY_IDS)).float().mean() > 0.5  # the bias took hold
    for options in ({"greedy": True}, {"temperature": 1.5, "generator": torch.Generator().manual_seed(0)}):
        new = generate(llm, ids, 8, **options)
        assert not torch.isin(new, torch.tensor(READ_ONLY_IDS)).any()


def test_generation_ends_early_once_every_row_has_stopped():
    llm = micro()
    ids = prompts(1, 4)
    first = int(generate(llm, ids, 1, greedy=True)[0, 0])
    assert generate(llm, ids, 10, greedy=True, eos_id=first).tolist() == [[first]]


def test_inputs_embeds_prompt_equals_input_ids_prompt():
    llm = micro()
    ids = prompts(2, 6)
    with torch.no_grad():
        embeds = llm.embed(ids)  # [2, 6, d]
    for use_cache in (True, False):
        from_ids = generate(llm, ids, 9, greedy=True, use_cache=use_cache)
        from_embeds = generate(llm, inputs_embeds=embeds, max_new_tokens=9, greedy=True, use_cache=use_cache)
        assert torch.equal(from_embeds, from_ids)


def test_cache_misuse_fails_clearly():
    llm = micro()
    ids = prompts(2, 5)
    with pytest.raises(ValueError, match="seq_ids"):
        llm(ids, seq_ids=torch.zeros_like(ids), kv_cache=llm.new_kv_cache(2, 8))
    with pytest.raises(ValueError, match="overflow"):
        llm(ids, kv_cache=llm.new_kv_cache(2, 4))
    with pytest.raises(ValueError, match="rows"):
        llm(ids, kv_cache=llm.new_kv_cache(3, 8))
    with pytest.raises(ValueError, match="exactly one"):
        generate(llm, max_new_tokens=3)
