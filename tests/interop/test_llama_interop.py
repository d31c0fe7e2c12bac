"""The LLM in and out of Hugging Face's Llama layout: the same logits in ``transformers`` at the trained RoPE base,
import then export bit-identical, tokenizer files ``AutoTokenizer`` reads, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers.tiny_hf import llama_folder, randomize  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mm_lightning import build_backbone  # noqa: E402
from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint  # noqa: E402
from mm_lightning.interop.checkpoints import save_backbones  # noqa: E402
from mm_lightning.interop.files import ConversionError  # noqa: E402
from mm_lightning.interop.llama import export_llama, import_llama, register_llama_preset  # noqa: E402
from mm_lightning.models import registry  # noqa: E402
from mm_lightning.models.registry import get_preset  # noqa: E402
from mm_lightning.ops.rope import YaRN  # noqa: E402
from mm_lightning.tokenizer import EOD_ID, PAD_ID, train_bpe_tokenizer  # noqa: E402

MICRO = {"vocab_size": 300, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 96}


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def trained_checkpoint(path: Path, rope_base: float, tie: bool, tokenizer=None) -> torch.nn.Module:
    """A checkpoint like a stage's, whose LLM's RoPE base was switched during training (config keeps 50,000)."""
    torch.manual_seed(0)
    llm = randomize(build_backbone("llm", "tiny", **MICRO, tie_embeddings=tie)).eval()
    llm.set_rope_base(rope_base)
    meta = {"rope_base": rope_base} | ({"tokenizer": tokenizer.to_str()} if tokenizer is not None else {})
    save_backbones(path, {"llm": (llm.config, llm.state_dict())}, {"format": "test"}, **meta)
    return llm


@pytest.mark.parametrize(("rope_base", "tie"), [(800_000.0, True), (800_000.0, False), (50_000.0, True)])
def test_exported_llm_gives_the_same_logits_in_transformers(tmp_path, rope_base, tie):
    llm = trained_checkpoint(tmp_path / "x.ckpt", rope_base, tie)
    export_llama(tmp_path / "x.ckpt", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == rope_base
    assert (
        config["tie_word_embeddings"] is tie
        and ("lm_head.weight" in load_file(tmp_path / "hf" / "model.safetensors")) is not tie
    )
    ids = torch.randint(0, MICRO["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = llm(ids)
    torch.testing.assert_close(hf_logits(tmp_path / "hf", ids), ours, atol=1e-4, rtol=0)
    assert ours.abs().max() > 1.0  # the comparison is not between near-zero logits


def test_the_rope_base_matters_so_the_comparison_can_fail(tmp_path):
    llm = trained_checkpoint(tmp_path / "x.ckpt", 800_000.0, tie=True)
    export_llama(tmp_path / "x.ckpt", tmp_path / "hf")
    ids = torch.randint(0, MICRO["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(1))
    llm.set_rope_base(50_000.0)
    with torch.no_grad():
        assert (hf_logits(tmp_path / "hf", ids) - llm(ids)).abs().max() > 1e-2


def test_an_llm_with_yarn_exports_it_and_transformers_computes_the_same_logits(tmp_path):
    torch.manual_seed(0)
    llm = randomize(build_backbone("llm", "tiny", **MICRO)).eval()
    llm.set_rope_base(200_000.0)
    llm.set_rope_yarn(YaRN(4.0, 512))  # the export's max_position_embeddings (2,048) is 4x 512, as YaRN expects
    save_backbones(tmp_path / "x.ckpt", {"llm": (llm.config, llm.state_dict())}, {"format": "test"},
                   rope_base=200_000.0)  # fmt: skip
    export_llama(tmp_path / "x.ckpt", tmp_path / "hf")
    rope = json.loads((tmp_path / "hf" / "config.json").read_text())["rope_parameters"]
    assert rope == {"rope_type": "yarn", "rope_theta": 2e5, "factor": 4.0, "original_max_position_embeddings": 512}
    ids = torch.randint(0, MICRO["vocab_size"], (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = llm(ids)
        llm.set_rope_yarn(None)
        plain = llm(ids)
    theirs = hf_logits(tmp_path / "hf", ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert (theirs - plain).abs().max() > 1e-2  # YaRN changed the logits, and transformers followed it


@pytest.mark.parametrize(("tie", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_import_then_export_is_bit_identical(tmp_path, tie, dtype):
    source = llama_folder(tmp_path, tie=tie, dtype=dtype)
    import_llama(source, tmp_path / "llama.ckpt")
    export_llama(tmp_path / "llama.ckpt", tmp_path / "again")
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    assert config["rope_theta"] == 500_000.0 and config["dtype"] == str(dtype).removeprefix("torch.")
    for field in ("vocab_size", "hidden_size", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
                  "bos_token_id", "eos_token_id", "max_position_embeddings"):  # fmt: skip
        assert config[field] == original[field], field
    assert (tmp_path / "again" / "generation_config.json").read_text() == (
        source / "generation_config.json"
    ).read_text()


def test_imported_llama_computes_the_originals_logits(tmp_path):
    source = llama_folder(tmp_path, tie=False)
    import_llama(source, tmp_path / "llama.ckpt")
    llm = load_backbone(tmp_path / "llama.ckpt", "llm").eval()
    assert llm.rope_base == checkpoint_meta(load_checkpoint(tmp_path / "llama.ckpt"))["rope_base"] == 500_000.0
    ids = torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(llm(ids), hf_logits(source, ids), atol=1e-4, rtol=0)


def test_export_writes_the_project_tokenizer_for_auto_tokenizer(tmp_path):
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "Pack my box with five dozen liquor jugs."] * 20
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    trained_checkpoint(tmp_path / "x.ckpt", 800_000.0, tie=True, tokenizer=tokenizer)
    export_llama(tmp_path / "x.ckpt", tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The lazy fox packs five boxes."
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (EOD_ID, PAD_ID)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (EOD_ID, PAD_ID, None)
    import_llama(tmp_path / "hf", tmp_path / "back.ckpt")  # the project's tokenizer comes back as the recorded one
    assert checkpoint_meta(load_checkpoint(tmp_path / "back.ckpt"))["tokenizer"] == tokenizer.to_str()


def test_registry_preset_from_a_llama_config(tmp_path, monkeypatch):
    llm_kind = registry._KINDS["llm"]
    monkeypatch.setattr(llm_kind, "presets", dict(llm_kind.presets))  # the registration ends with the test
    source = llama_folder(tmp_path, tie=True)
    config = register_llama_preset("test-interop-tiny-llama", source)
    assert get_preset("llm", "test-interop-tiny-llama") == config
    assert (config.n_kv_heads, config.rope_base, config.tie_embeddings) == (2, 500_000.0, True)


def test_refusals_name_what_differs(tmp_path):
    scaled = llama_folder(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ConversionError, match="RoPE scaling 'linear'.*--drop-rope-scaling"):
        import_llama(scaled, tmp_path / "a.ckpt")
    import_llama(scaled, tmp_path / "a.ckpt", drop_rope_scaling=True)
    source = llama_folder(tmp_path, tie=False)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(
        ConversionError, match=r"model.layers.0.mlp.down_proj.weight \[64, 96\] \(expected \[64, 128\]\)"
    ):
        import_llama(source, tmp_path / "b.ckpt")
    (source / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ConversionError, match="attention_bias True"):
        import_llama(source, tmp_path / "c.ckpt")
    with pytest.raises(ConversionError, match="exists; pass --overwrite"):
        import_llama(scaled, tmp_path / "a.ckpt")


def test_an_llm_with_smeared_keys_is_refused_by_export(tmp_path):
    """A Llama has no key-smear gate: exporting one would silently drop it, so the export refuses, writing nothing."""
    llm = build_backbone("llm", "tiny", **MICRO, key_smear=True)
    save_backbones(tmp_path / "s.ckpt", {"llm": (llm.config, llm.state_dict())}, {"format": "test"})
    with pytest.raises(ConversionError, match=r"s.ckpt: its LLM has smeared keys \(key_smear: true\)"):
        export_llama(tmp_path / "s.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
