"""The LLM backbone: preset sizes, packed == unpacked, RoPE base as state, inputs_embeds."""

import pytest
import torch

from mm_lightning import build_backbone
from mm_lightning.errors import ConfigError
from mm_lightning.models import LLM
from mm_lightning.ops.key_smear import GATE_INIT
from mm_lightning.ops.rope import YaRN


def micro(**overrides) -> LLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=97, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    return build_backbone("llm", "tiny", **{**fields, **overrides}).eval()


@pytest.mark.parametrize(
    ("name", "expected_millions", "tolerance"),
    [("tiny", 5.0, 0.05), ("small", 125.0, 0.05), ("1b", 1236.0, 0.01)],
)
def test_preset_parameter_counts(name, expected_millions, tolerance):
    with torch.device("meta"):
        llm = build_backbone("llm", name)
    assert llm.num_params() / 1e6 == pytest.approx(expected_millions, rel=tolerance)


def test_1b_has_llama_3_2_1b_shapes():
    with torch.device("meta"):
        llm = build_backbone("llm", "1b")
    cfg = llm.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden) == (16, 2048, 32, 8, 8192)
    assert cfg.rope_base == 50_000 and cfg.tie_embeddings


def test_logits_shape_and_tied_head():
    llm = micro()
    logits = llm(torch.randint(0, 97, (3, 11)))
    assert logits.shape == (3, 11, 97)
    assert llm.lm_head.weight is llm.embed.weight
    assert micro(tie_embeddings=False).lm_head.weight is not micro(tie_embeddings=False).embed.weight


@pytest.mark.parametrize(
    ("key_smear", "smear_lags"), [(False, 1), (True, 1), (True, 3), (True, [3, 1]), ([True, False], [3, 1])]
)
def test_packed_row_equals_documents_alone(key_smear, smear_lags):
    llm = micro(key_smear=key_smear, smear_lags=smear_lags, init_std=0.3)
    for block in llm.blocks:  # a large share, so a key smeared across a document boundary would show
        if block.attn.smear_logit is not None:
            torch.nn.init.constant_(block.attn.smear_logit, 1.0)
    docs = [torch.randint(1, 97, (n,)) for n in (5, 9, 2)]
    packed = torch.cat(docs)[None]  # [1, 16]
    seq_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        packed_logits = llm(packed, seq_ids=seq_ids)[0]
        alone = torch.cat([llm(d[None])[0] for d in docs])
    torch.testing.assert_close(packed_logits, alone, atol=1e-5, rtol=1e-5)


def test_packing_without_seq_ids_leaks_across_documents():
    """Guards the test above: without boundaries the second document's logits do change."""
    llm = micro()
    a, b = torch.randint(1, 97, (6,)), torch.randint(1, 97, (6,))
    with torch.no_grad():
        leaked = llm(torch.cat([a, b])[None])[0, 6:]
        alone = llm(b[None])[0]
    assert not torch.allclose(leaked, alone, atol=1e-3)


def test_rope_base_is_run_time_state_that_travels_in_the_state_dict():
    llm = micro()
    ids = torch.randint(0, 97, (1, 32))
    with torch.no_grad():
        before = llm(ids)
        llm.set_rope_base(800_000)
        after = llm(ids)
    assert not torch.allclose(before, after)
    reloaded = micro()
    assert reloaded.rope_base == 50_000
    reloaded.load_state_dict(llm.state_dict())
    assert reloaded.rope_base == 800_000
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), after)
    with pytest.raises(ValueError, match="positive"):
        llm.set_rope_base(0)


def test_yarn_is_run_time_state_that_travels_in_the_state_dict_and_old_checkpoints_load_without_it():
    llm = micro()
    ids = torch.randint(0, 97, (1, 32))
    old_state = llm.state_dict()  # as a checkpoint from before YaRN: its extra state holds the base only
    with torch.no_grad():
        before = llm(ids)
        llm.set_rope_yarn(YaRN(4.0, 8))
        after = llm(ids)
    assert not torch.allclose(before, after)
    reloaded = micro()
    reloaded.load_state_dict(llm.state_dict())
    assert reloaded.rope_yarn == YaRN(4.0, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), after)
    reloaded.load_state_dict(old_state)
    assert reloaded.rope_yarn is None
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), before)


def test_inputs_embeds_equals_input_ids():
    llm = micro()
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(llm(inputs_embeds=llm.embed(ids)), llm(input_ids=ids))
    with pytest.raises(ValueError, match="exactly one"):
        llm()


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads"):
        micro(n_kv_heads=3)


def test_smeared_keys_change_the_model_and_train_their_gates():
    """``key_smear`` adds one gate per key head and layer (mostly the predecessor's key at first, or
    ``key_smear_init``); they shape the logits and learn."""
    plain, smeared = micro(init_std=0.3), micro(init_std=0.3, key_smear=True)
    gates = [name for name, _ in smeared.named_parameters() if "smear" in name]
    assert gates == [f"blocks.{i}.attn.smear_logit" for i in range(2)]
    assert torch.allclose(smeared.blocks[0].attn.smear_logit, torch.full((2,), GATE_INIT))
    assert torch.allclose(micro(key_smear=True, key_smear_init=-1.5).blocks[1].attn.smear_logit, torch.full((2,), -1.5))
    assert smeared.num_params() == plain.num_params() + 2 * 2
    ids = torch.randint(1, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    smeared.load_state_dict(plain.state_dict(), strict=False)  # same weights; only the smear differs
    logits = smeared(ids)
    with torch.no_grad():
        assert torch.allclose(logits[:, 0], plain(ids)[:, 0], atol=1e-5)  # position 0 has nothing before it
        assert not torch.allclose(logits[:, 1:], plain(ids)[:, 1:], atol=1e-3)
    logits.logsumexp(-1).mean().backward()
    assert smeared.blocks[1].attn.smear_logit.grad.abs().sum() > 0


def test_further_smear_lags_start_at_their_weight_and_at_zero_are_the_one_lag_model():
    """``smear_lags: 3`` adds per-head weights of the keys' lags 2-3 and the queries' lags 1-2; set to zero, the model
    is the one-lag smear's; they learn; without ``key_smear`` the option is refused."""
    one, three = micro(init_std=0.3, key_smear=True), micro(init_std=0.3, key_smear=True, smear_lags=3)
    attn = three.blocks[0].attn
    assert attn.key_lag_weights.shape == (2 * 2,) and attn.query_lag_weights.shape == (2 * 4,)
    assert torch.allclose(attn.query_lag_weights, torch.full((8,), 0.5))
    ids = torch.randint(1, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    three.load_state_dict(one.state_dict(), strict=False)
    logits = three(ids)
    logits.logsumexp(-1).mean().backward()
    assert attn.key_lag_weights.grad.abs().sum() > 0 and attn.query_lag_weights.grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(logits[:, 1:], one(ids)[:, 1:], atol=1e-3)
        for block in three.blocks:
            block.attn.key_lag_weights.zero_()
            block.attn.query_lag_weights.zero_()
        torch.testing.assert_close(three(ids), one(ids))
    with pytest.raises(ConfigError, match="smear_lags=3: more than 1 needs key_smear: true"):
        micro(smear_lags=3)


def test_smear_lags_per_layer_give_lag_weights_only_where_more_than_one():
    """A list gives each layer its own lags: layer 0 of ``[3, 1]`` has the three-lag weights and equals layer 0 of
    the three-lag model with the same weights; layer 1 has none and equals the one-lag model's layer 1. Lists of
    the wrong length or with a value under 1 are refused, naming the option."""
    mixed = micro(init_std=0.3, key_smear=True, smear_lags=[3, 1])
    three = micro(init_std=0.3, key_smear=True, smear_lags=3)
    assert mixed.blocks[0].attn.key_lag_weights.shape == (2 * 2,)
    assert mixed.blocks[1].attn.key_lag_weights is None and mixed.blocks[1].attn.query_lag_weights is None
    ids = torch.randint(1, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed.load_state_dict(three.state_dict(), strict=False)
        assert not torch.allclose(mixed(ids), three(ids), atol=1e-3)  # layer 1's extra lags are gone
        three.blocks[1].attn.key_lag_weights.zero_()
        three.blocks[1].attn.query_lag_weights.zero_()
        torch.testing.assert_close(mixed(ids), three(ids))
    for bad in ([3], [3, 0], [3, 1, 1]):
        with pytest.raises(ConfigError, match=r"smear_lags=\[.*\]: must be a whole number >= 1, or a list of 2"):
            micro(key_smear=True, smear_lags=bad)
    with pytest.raises(ConfigError, match="more than 1 needs key_smear"):
        micro(smear_lags=[1, 2])


def test_key_smear_per_layer_gives_gates_only_where_true():
    """A list gives each layer its own smear: layer 1 of ``[false, true]`` has gates and equals the all-smeared
    model's layer 1; layer 0 has none and equals the plain model's layer 0. Wrong lists, and further lags in a layer
    without the smear, are refused, naming the option."""
    mixed = micro(init_std=0.3, key_smear=[False, True])
    smeared = micro(init_std=0.3, key_smear=True)
    assert mixed.blocks[0].attn.smear_logit is None and mixed.blocks[1].attn.smear_logit.shape == (2,)
    assert mixed.config.any_smear and not micro().config.any_smear
    ids = torch.randint(1, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed.load_state_dict(smeared.state_dict(), strict=False)
        assert not torch.allclose(mixed(ids), smeared(ids), atol=1e-3)  # layer 0's smear is gone
        smeared.blocks[0].attn.smear_logit.fill_(-30.0)  # a gate of ~0: layer 0 keys on its own position
        torch.testing.assert_close(mixed(ids), smeared(ids))
    for bad in ([True], [True, 1], [True, False, True]):
        with pytest.raises(ConfigError, match=r"key_smear=\[.*\]: must be true or false, or a list of 2"):
            micro(key_smear=bad)
    with pytest.raises(ConfigError, match=r"more than 1 needs key_smear: true \(in that layer"):
        micro(key_smear=[True, False], smear_lags=[1, 3])
