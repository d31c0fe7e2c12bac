"""Tiny Hugging Face models with random weights, saved locally for the interop tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

LLAMA = {"vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "rms_norm_eps": 1e-5}  # fmt: skip
SIGLIP = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6}  # fmt: skip


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm gains and biases too), so a swapped or dropped tensor shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn(param.shape, generator=generator))
    return model


def llama_folder(root: Path, tie: bool = False, dtype: torch.dtype = torch.float32, **fields) -> Path:
    """``save_pretrained`` of a tiny random ``LlamaForCausalLM`` (RoPE base 500,000 unless ``fields`` say)."""
    config = transformers.LlamaConfig(**{**LLAMA, "tie_word_embeddings": tie, "rope_theta": 500_000.0, **fields})
    model = randomize(transformers.LlamaForCausalLM(config)).to(dtype)
    folder = root / f"llama_tie{tie}_{str(dtype).removeprefix('torch.')}"
    model.save_pretrained(folder)
    return folder


def siglip_folder(root: Path, **fields) -> Path:
    """``save_pretrained`` of a tiny random ``SiglipVisionModel`` (32x32 images of 8x8 patches)."""
    model = randomize(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**{**SIGLIP, **fields})))
    folder = root / f"siglip_{fields.get('hidden_act', 'default')}"
    model.save_pretrained(folder)
    return folder
