"""The project's LLM in Hugging Face's Llama layout and back: config fields and parameter names.

The LLM (``models/llm.py``) is Llama (Touvron et al. 2023) with two fused matmuls: ``attn.qkv`` holds
``q_proj``, ``k_proj`` and ``v_proj`` stacked by rows, ``mlp.gate_up`` holds ``gate_proj`` then ``up_proj``.
Its RoPE rotates the two halves of each head (``rotate_half``), as ``transformers``' Llama does, so q/k weights
need no permutation; grouped-query heads are repeated the same way (kv head ``h // (H / Hkv)``). Splitting and
concatenating rows copies values exactly, so a conversion there and back is bit-identical. The RoPE base that
``config.json`` gets is the checkpoint's trained one (``LLM.rope_base``, e.g. 800,000 after the long-context
stage), not the preset's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mm_lightning.interop.files import ConversionError
from mm_lightning.models.llm import LLM, LLMConfig

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers older ``transformers`` versions saved with the weights; recomputed, never needed."""
_BLOCK = {  # ours -> Llama's, within block i / layer i
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def rope_theta(hf_config: dict[str, Any]) -> float:
    """The RoPE base of a Llama ``config.json`` (``rope_parameters`` in transformers 5, ``rope_theta`` before)."""
    parameters = hf_config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))


def rope_scaling(hf_config: dict[str, Any]) -> str | None:
    """The RoPE scaling type a Llama ``config.json`` asks for (``llama3``, ``linear``, ...), None for plain RoPE."""
    scaling = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return None if kind == "default" else str(kind)


def llm_config_from_llama(hf_config: dict[str, Any], drop_rope_scaling: bool = False) -> LLMConfig:
    """The :class:`LLMConfig` of a Llama ``config.json``; refuses what the LLM cannot compute the same way.

    Args:
        hf_config: the parsed ``config.json``.
        drop_rope_scaling: convert a config with RoPE scaling (Llama 3.x's ``llama3``) to plain RoPE at the same
            base; the logits then differ from the original's.
    """
    source = f"config.json (model_type {hf_config.get('model_type')!r})"
    if hf_config.get("model_type") != "llama":
        raise ConversionError(f"{source} is not a Llama; only model_type 'llama' converts to the project's LLM")
    hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    refusals = {
        "hidden_act": (hf_config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf_config.get("attention_bias", False), False),
        "mlp_bias": (hf_config.get("mlp_bias", False), False),
        "head_dim": (hf_config.get("head_dim") or hidden // heads, hidden // heads),
    }
    differ = [f"{name} {have!r} (the LLM has {want!r})" for name, (have, want) in refusals.items() if have != want]
    scaling = rope_scaling(hf_config)
    if scaling and not drop_rope_scaling:
        differ.append(f"RoPE scaling {scaling!r} (the LLM has plain RoPE; --drop-rope-scaling converts without it)")
    if differ:
        raise ConversionError(f"{source} has what the project's LLM cannot compute: {'; '.join(differ)}")
    return LLMConfig(
        vocab_size=hf_config["vocab_size"],
        n_layers=hf_config["num_hidden_layers"],
        d_model=hidden,
        n_heads=heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or heads,
        ffn_hidden=hf_config["intermediate_size"],
        rope_base=rope_theta(hf_config),
        norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        init_std=hf_config.get("initializer_range", 0.02),
    )


def llama_config(llm: LLM, dtype: str, **fields: Any) -> dict[str, Any]:
    """The Llama ``config.json`` of ``llm`` at its current (trained) RoPE base.

    Args:
        llm: the model; ``llm.rope_base`` becomes ``rope_theta``.
        dtype: the dtype the weights are written in (``float32``, ``bfloat16``, ``float16``).
        fields: further entries (token ids, ``max_position_embeddings``) that override the defaults.
    """
    cfg = llm.config
    rope = {"rope_type": "default", "rope_theta": llm.rope_base}
    yarn = llm.rope_yarn
    if yarn is not None:  # transformers computes YaRN's ramp and temperature as ``ops/rope.py`` does (tested)
        rope = {"rope_type": "yarn", "rope_theta": llm.rope_base, "factor": yarn.factor,
                "original_max_position_embeddings": yarn.original_len}  # fmt: skip
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": llm.rope_base,  # transformers < 5 and most other readers
        "rope_scaling": None if yarn is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "rope_parameters": rope,  # transformers >= 5
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        **fields,
    }


def llama_state(llm: LLM) -> dict[str, Tensor]:
    """``llm``'s weights under Llama's parameter names (the tied head left out, as ``save_pretrained`` does)."""
    cfg = llm.config
    widths = [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    state = {"model.embed_tokens.weight": llm.embed.weight, "model.norm.weight": llm.norm.weight}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = llm.lm_head.weight
    for i, block in enumerate(llm.blocks):
        layer = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split(widths)
        gate, up = block.mlp.gate_up.weight.chunk(2)
        state |= {
            f"{layer}self_attn.q_proj.weight": q,
            f"{layer}self_attn.k_proj.weight": k,
            f"{layer}self_attn.v_proj.weight": v,
            f"{layer}mlp.gate_proj.weight": gate,
            f"{layer}mlp.up_proj.weight": up,
        }
        block_state = dict(block.named_parameters())
        state |= {layer + theirs: block_state[ours] for ours, theirs in _BLOCK.items()}
    return {name: tensor.detach() for name, tensor in state.items()}


def llama_shapes(config: LLMConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every Llama tensor of a model with ``config`` (``lm_head`` only when untied)."""
    d, f, q, kv = (
        config.d_model,
        config.ffn_hidden,
        config.n_heads * config.head_dim,
        config.n_kv_heads * config.head_dim,
    )
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    per_layer = {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    for i in range(config.n_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in per_layer.items()}
    return shapes


def llm_state(tensors: dict[str, Tensor], config: LLMConfig) -> dict[str, Tensor]:
    """The :class:`~mm_lightning.models.llm.LLM` state dict of Llama ``tensors`` (already checked against
    :func:`llama_shapes`), with the RoPE base as the extra state."""
    state = {"embed.weight": tensors["model.embed_tokens.weight"], "norm.weight": tensors["model.norm.weight"]}
    state["lm_head.weight"] = tensors["model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
    for i in range(config.n_layers):
        layer, block = f"model.layers.{i}.", f"blocks.{i}."
        qkv = [tensors[f"{layer}self_attn.{name}_proj.weight"] for name in "qkv"]
        state[f"{block}attn.qkv.weight"] = torch.cat(qkv)
        state[f"{block}mlp.gate_up.weight"] = torch.cat(
            [tensors[f"{layer}mlp.{name}_proj.weight"] for name in ("gate", "up")]
        )
        state |= {block + ours: tensors[layer + theirs] for ours, theirs in _BLOCK.items()}
    state["_extra_state"] = {"rope_base": float(config.rope_base)}
    return state
