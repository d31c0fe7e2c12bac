"""LoRA adapters: only adapters train, merged == adapted, fresh == base, save/load, loud config errors."""

import copy

import pytest
import torch

from mm_lightning import build_backbone
from mm_lightning.errors import ConfigError
from mm_lightning.models import LLM
from mm_lightning.models.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_trainable,
    load_adapters,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    save_adapters,
)

VOCAB = 97


def micro(preset_fields: bool = True) -> LLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    return build_backbone("llm", "tiny", **(fields if preset_fields else {})).eval()


def tokens(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def randomize_b(model: torch.nn.Module) -> None:
    """Non-zero B, so that adapters change the output (at init they are exactly zero)."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_b.copy_(0.05 * torch.randn(layer.lora_b.shape, generator=generator))


def test_backward_reaches_adapters_only():
    llm = micro()
    replaced = apply_lora(llm, LoRAConfig(rank=4))
    assert len(replaced) == 2 * 4 and "blocks.1.mlp.gate_up" in replaced
    randomize_b(llm)  # with B = 0, A would get no gradient
    llm(tokens()).square().mean().backward()
    for name, param in llm.named_parameters():
        if name.endswith((".lora_a", ".lora_b")):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    trainable, total = count_trainable(llm)
    assert trainable == sum(4 * (layer.in_features + layer.out_features) for layer in _bases(llm))
    assert 0 < trainable < total


def _bases(model):
    return [layer.base for layer in model.modules() if isinstance(layer, LoRALinear)]


def test_fresh_adapters_change_nothing():
    llm = micro()
    expected = llm(tokens())
    apply_lora(llm, LoRAConfig())
    assert torch.equal(llm(tokens()), expected)


def test_merged_equals_adapted():
    llm = micro()
    base_logits = llm(tokens())
    paths = apply_lora(llm, LoRAConfig(rank=4, alpha=8.0))
    randomize_b(llm)
    adapted = llm(tokens())
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapters do change the output

    assert merge_lora(llm) == paths
    assert not any(isinstance(layer, LoRALinear) for layer in llm.modules())
    torch.testing.assert_close(llm(tokens()), adapted, atol=1e-5, rtol=0)

    plain = micro()  # a model that knows nothing of LoRA loads the merged weights
    plain.load_state_dict(llm.state_dict())
    torch.testing.assert_close(plain(tokens()), adapted, atol=1e-5, rtol=0)


def test_save_load_round_trip_is_small(tmp_path):
    llm = micro(preset_fields=False)  # the tiny preset itself, for a meaningful size ratio
    config = LoRAConfig(rank=8, alpha=16.0)
    apply_lora(llm, config)
    randomize_b(llm)
    ids = tokens(llm.config.vocab_size)
    expected = llm(ids)
    save_adapters(llm, config, tmp_path / "adapters.pt")

    fresh = micro(preset_fields=False)
    assert load_adapters(fresh, tmp_path / "adapters.pt") == config
    torch.testing.assert_close(fresh(ids), expected, atol=0, rtol=0)

    saved = torch.load(tmp_path / "adapters.pt", weights_only=True)
    assert saved["lora_config"]["rank"] == 8 and saved["adapters"].keys() == lora_state_dict(llm).keys()
    torch.save(micro(preset_fields=False).state_dict(), tmp_path / "full.pt")
    ratio = (tmp_path / "adapters.pt").stat().st_size / (tmp_path / "full.pt").stat().st_size
    print(f"rank-8 adapter file / full tiny-LLM state dict: {ratio:.2%}")
    assert ratio < 0.10


def test_load_refuses_adapters_that_do_not_fit(tmp_path):
    llm = micro()
    apply_lora(llm, LoRAConfig(rank=4))
    state = lora_state_dict(llm)
    with pytest.raises(ConfigError, match=r"missing keys \['blocks.0.attn.proj.lora_a'\]"):
        load_lora_state_dict(llm, {k: v for k, v in state.items() if k != "blocks.0.attn.proj.lora_a"})
    with pytest.raises(ConfigError, match=r"unexpected keys \['head.lora_a'\]"):
        load_lora_state_dict(llm, state | {"head.lora_a": torch.zeros(1)})

    other = micro()
    apply_lora(other, LoRAConfig(rank=2))
    save_adapters(other, LoRAConfig(rank=2), tmp_path / "rank2.pt")
    with pytest.raises(ConfigError, match=r"shape mismatch blocks.0.attn.qkv.lora_a: saved \(2, 64\), model \(4, 64\)"):
        load_adapters(llm, tmp_path / "rank2.pt")

    save_adapters(llm, LoRAConfig(rank=4, alpha=4.0), tmp_path / "alpha4.pt")  # same shapes, another scale
    with pytest.raises(ConfigError, match=r"trained at scale 1, the model's have \[4.0\]"):
        load_adapters(llm, tmp_path / "alpha4.pt")


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    llm = micro()
    with pytest.raises(ConfigError, match=r"\['fc1'\] match no nn.Linear.*\['down', 'gate_up', 'lm_head', 'proj'"):
        apply_lora(llm, LoRAConfig(targets=("qkv", "fc1")))
    with pytest.raises(ConfigError, match="'lm_head' has a weight tied to \\['embed.weight'\\]"):
        apply_lora(llm, LoRAConfig(targets=("lm_head",)))
    assert not any(isinstance(layer, LoRALinear) for layer in llm.modules())  # refused before changing anything

    apply_lora(llm, LoRAConfig())
    before = copy.deepcopy(llm.state_dict())
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(llm, LoRAConfig())
    assert llm.state_dict().keys() == before.keys()


def test_vit_targets():
    torch.manual_seed(0)
    vit = build_backbone("vit", "tiny")
    paths = apply_lora(vit, LoRAConfig(targets=("qkv", "fc2")))
    assert paths and all(path.endswith(("attn.qkv", "mlp.fc2")) for path in paths)


def test_autocast_bf16_forward_and_backward():
    llm = micro()
    apply_lora(llm, LoRAConfig(rank=4, dropout=0.1))
    llm.train()
    randomize_b(llm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = llm(tokens())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in llm.parameters() if p.requires_grad)
