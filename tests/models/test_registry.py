"""The backbone registry: every preset builds, overrides apply, unknown names fail with the known ones."""

import pytest
import torch
from torch import nn

from mm_lightning import build_backbone, get_preset, list_backbones, register_backbone, register_preset
from mm_lightning.errors import ConfigError
from mm_lightning.models import LLM, LLMConfig
from mm_lightning.models.registry import resolve_config


def test_every_registered_preset_builds():
    for kind, presets in list_backbones().items():
        assert presets, f"kind {kind} has no presets"
        for name in presets:
            with torch.device("meta"):  # shapes only, no memory
                module = build_backbone(kind, name)
            assert isinstance(module, nn.Module)


def test_overrides_reach_the_module():
    llm = build_backbone("llm", "tiny", n_layers=6, vocab_size=1000)
    assert isinstance(llm, LLM)
    assert len(llm.blocks) == 6
    assert llm.embed.weight.shape == (1000, 256)


def test_get_preset_returns_a_copy():
    config = get_preset("llm", "tiny")
    config.n_layers = 99
    assert get_preset("llm", "tiny").n_layers != 99


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="known presets: 1b, small, tiny"):
        get_preset("llm", "huge")
    with pytest.raises(ConfigError, match="known kinds: .*llm"):
        build_backbone("nope", "tiny")
    with pytest.raises(ConfigError, match=r"Unknown llm config field\(s\) \['n_layer'\]; known fields: .*n_layers"):
        resolve_config("llm", "tiny", n_layer=3)


def test_derived_fields_are_not_overridable_and_recomputed():
    with pytest.raises(ConfigError, match="head_dim"):
        resolve_config("llm", "tiny", head_dim=16)
    assert resolve_config("llm", "tiny", d_model=512).head_dim == 64


def test_registering_is_one_decorator_and_duplicates_fail():
    @register_preset("llm", "test-micro")
    def micro() -> LLMConfig:
        return LLMConfig(vocab_size=64, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64)

    assert build_backbone("llm", "test-micro").num_params() > 0
    with pytest.raises(ValueError, match="already registered"):
        register_preset("llm", "test-micro")(micro)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("llm", LLMConfig)(LLM)
