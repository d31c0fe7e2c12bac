"""A Hugging Face SigLIP vision tower (``SiglipVisionModel``, or the vision half of ``SiglipModel``) as the ViT.

SigLIP (Zhai et al. 2023) is the ViT's architecture without 2-D RoPE: the same pre-norm blocks, LayerNorms and
tanh-approximated GELU, a learned square position table, and ``post_layernorm`` as the ViT's final norm. The
conv patch embedding becomes the ViT's linear one (patches are flattened channel-first, as a ``Conv2d`` weight is),
q/k/v stack into ``attn.qkv``, and the MAP pooling ``head`` is left out: the ViT returns patch features, which are
SigLIP's ``last_hidden_state``. SigLIP 2's NaFlex towers (``siglip2``) are another layout and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mm_lightning.interop.files import ConversionError, check_tensors, read_config, read_safetensors
from mm_lightning.models.vit import ViTConfig

GELU_VARIANTS = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}
"""``hidden_act`` values and the ViT's ``gelu_approximate`` that computes them."""
_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
"""``SiglipVisionConfig``'s defaults, for the fields a saved config may leave out."""
_PATCH_EMBED = "embeddings.patch_embedding.weight"
_LAYER = {  # ours -> SigLIP's, within block i / encoder layer i
    "attn_norm": "layer_norm1",
    "attn.proj": "self_attn.out_proj",
    "mlp_norm": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def siglip_vision_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The vision fields of a SigLIP ``config.json`` (a vision model's own, or a ``SiglipModel``'s vision part)."""
    model_type = hf_config.get("model_type")
    if model_type == "siglip":
        hf_config = hf_config.get("vision_config") or {}
    elif model_type != "siglip_vision_model":
        raise ConversionError(
            f"config.json has model_type {model_type!r}; SigLIP towers are 'siglip_vision_model' or 'siglip'"
        )
    return {**_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}


def vit_config_from_siglip(hf_config: dict[str, Any]) -> ViTConfig:
    """The ViT config of a SigLIP vision config, at its native position grid and without 2-D RoPE."""
    vision = siglip_vision_config(hf_config)
    act, size, patch = vision["hidden_act"], vision["image_size"], vision["patch_size"]
    differ = [f"hidden_act {act!r} (the ViT computes {', '.join(GELU_VARIANTS)})"] if act not in GELU_VARIANTS else []
    if vision["num_channels"] != 3:
        differ.append(f"num_channels {vision['num_channels']} (the ViT takes RGB)")
    if not isinstance(size, int) or size % patch:
        differ.append(f"image_size {size!r} (the ViT needs a square image of whole {patch}-pixel patches)")
    if differ:
        raise ConversionError(f"the SigLIP config has what the ViT cannot compute: {'; '.join(differ)}")
    grid = size // patch
    return ViTConfig(
        patch_size=patch,
        d_model=vision["hidden_size"],
        n_layers=vision["num_hidden_layers"],
        n_heads=vision["num_attention_heads"],
        mlp_hidden=vision["intermediate_size"],
        max_patches=grid * grid,
        pos_grid=grid,
        norm_eps=vision["layer_norm_eps"],
        rope_2d=False,
        gelu_approximate=GELU_VARIANTS[act],
    )


def siglip_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a SigLIP vision tower (head left out), names relative to ``vision_model.``."""
    d, hidden, p = config.d_model, config.mlp_hidden, config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        _PATCH_EMBED: (d, 3, p, p),
        "embeddings.patch_embedding.bias": (d,),
        "embeddings.position_embedding.weight": (config.pos_grid**2, d),
        "post_layernorm.weight": (d,),
        "post_layernorm.bias": (d,),
    }
    per_layer = {
        "layer_norm1": (d,),
        "layer_norm2": (d,),
        "mlp.fc1": (hidden, d),
        "mlp.fc2": (d, hidden),
        **{f"self_attn.{name}_proj": (d, d) for name in ("q", "k", "v", "out")},
    }
    for i in range(config.n_layers):
        for name, weight in per_layer.items():  # a bias has the weight's output width
            shapes |= {f"encoder.layers.{i}.{name}.weight": weight, f"encoder.layers.{i}.{name}.bias": weight[:1]}
    return shapes


def vision_tensors(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The tower's tensors, renamed relative to its prefix (``vision_model.`` or none), pooling head left out."""
    prefixes = [name[: -len(_PATCH_EMBED)] for name in tensors if name.endswith(_PATCH_EMBED)]
    if len(prefixes) != 1:
        raise ConversionError(f"{source} holds {len(prefixes)} SigLIP patch embeddings (*.{_PATCH_EMBED}); expected 1")
    prefix = prefixes[0]
    return {
        name[len(prefix) :]: t
        for name, t in tensors.items()
        if name.startswith(prefix) and not name[len(prefix) :].startswith("head.")
    }


def vit_state_from_siglip(tensors: dict[str, Tensor], config: ViTConfig) -> dict[str, Tensor]:
    """The ViT state dict of SigLIP tensors (already checked against :func:`siglip_shapes`)."""
    d = config.d_model
    state = {
        "patch_embed.weight": tensors[_PATCH_EMBED].reshape(d, -1),  # [d, 3 * p * p], channel-first like the patches
        "patch_embed.bias": tensors["embeddings.patch_embedding.bias"],
        "pos_embed": tensors["embeddings.position_embedding.weight"].reshape(config.pos_grid, config.pos_grid, d),
        "norm.weight": tensors["post_layernorm.weight"],
        "norm.bias": tensors["post_layernorm.bias"],
    }
    for i in range(config.n_layers):
        layer, block = f"encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [tensors[f"{layer}self_attn.{name}_proj.{kind}"] for name in "qkv"]
            state[f"{block}attn.qkv.{kind}"] = torch.cat(qkv)
            state |= {f"{block}{ours}.{kind}": tensors[f"{layer}{theirs}.{kind}"] for ours, theirs in _LAYER.items()}
    return state


def read_siglip(folder: str | Path) -> tuple[ViTConfig, dict[str, Tensor]]:
    """The ViT config and state dict of a Hugging Face SigLIP folder (``config.json`` + safetensors)."""
    config = vit_config_from_siglip(read_config(folder))
    tensors = vision_tensors(read_safetensors(folder), str(folder))
    check_tensors(tensors, siglip_shapes(config), str(folder), "the SigLIP vision tower its config.json describes")
    return config, vit_state_from_siglip(tensors, config)
