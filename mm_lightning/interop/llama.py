"""Hugging Face Llama folders in and out: ``convert export-llama`` and ``convert import-llama``.

An export writes what ``LlamaForCausalLM.from_pretrained`` reads: ``config.json`` (at the checkpoint's trained RoPE
base), ``model.safetensors`` under Llama's names (:mod:`~mm_lightning.interop.llama_layout`) and tokenizer files.
An import writes a checkpoint whose LLM starts stage 1 (``model.init_args.llm_checkpoint``), alignment or the joint
stages, keeping the weights' dtype and the folder's tokenizer files, so that importing and exporting again gives
the same tensors, bit for bit, and the same tokenizer files. A folder's ``config.json`` can also become a registry
preset (:func:`register_llama_preset`), for building the architecture with fresh weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mm_lightning.checkpoint import checkpoint_meta, load_backbone, load_checkpoint
from mm_lightning.interop.checkpoints import save_backbones
from mm_lightning.interop.files import (
    DTYPES,
    SAFETENSORS,
    ConversionError,
    check_output,
    check_tensors,
    read_config,
    read_safetensors,
    write_json,
    write_safetensors,
)
from mm_lightning.interop.llama_layout import (
    IGNORED_SUFFIXES,
    llama_config,
    llama_shapes,
    llama_state,
    llm_config_from_llama,
    llm_state,
)
from mm_lightning.interop.tokenizer_files import (
    PROJECT_TOKEN_IDS,
    read_tokenizer_files,
    write_project_tokenizer,
    write_tokenizer_files,
)
from mm_lightning.models.llm import LLMConfig
from mm_lightning.models.registry import register_preset
from mm_lightning.tokenizer import TokenizerError, load_tokenizer, tokenizer_from_str

FORMAT = "hf-llama"
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def export_llama(
    ckpt: str | Path, out: str | Path, dtype: str = "auto", tokenizer: str | None = None, overwrite: bool = False
) -> str:
    """Write the LLM of a checkpoint as a Hugging Face Llama folder.

    Args:
        ckpt: a stage checkpoint (LoRA adapters are merged) or one ``import-llama`` wrote.
        out: the folder to write.
        dtype: ``float32``, ``bfloat16``, ``float16``, or ``auto``: the dtype an imported model came in, else float32.
        tokenizer: a project ``tokenizer.json`` to write; default: the one the checkpoint recorded.
        overwrite: replace the files of an earlier export in ``out``.

    Returns:
        A one-line summary.
    """
    checkpoint = load_checkpoint(ckpt)
    meta = checkpoint_meta(checkpoint, ckpt)
    source = meta.get("converted_from", {}) if meta.get("converted_from", {}).get("format") == FORMAT else {}
    dtype = source.get("dtype", "float32") if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    out = Path(out)
    check_output(out, overwrite, ("config.json", SAFETENSORS))
    llm = load_backbone(ckpt, "llm")
    if llm.config.any_smear:
        raise ConversionError(
            f"{ckpt}: its LLM has smeared keys (key_smear: true), which a Llama cannot compute; only an LLM trained "
            "without them exports"
        )
    data_args = checkpoint.get("datamodule_hyper_parameters") or {}
    max_length = source.get("max_position_embeddings") or data_args.get("seq_len") or 2048
    fields = {"max_position_embeddings": max_length}
    project_tokenizer = load_tokenizer(tokenizer) if tokenizer else None
    if project_tokenizer is None and meta.get("tokenizer"):
        project_tokenizer = tokenizer_from_str(meta["tokenizer"], f"the tokenizer recorded in {ckpt}")
    fields |= PROJECT_TOKEN_IDS if project_tokenizer is not None else source.get("token_ids", {})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", llama_config(llm, dtype, **fields))
    write_safetensors(out / SAFETENSORS, {name: t.to(DTYPES[dtype]) for name, t in llama_state(llm).items()})
    if project_tokenizer is not None:
        write_project_tokenizer(out, project_tokenizer, max_length)
        tokenizer_note = "the project's tokenizer"
    else:
        write_tokenizer_files(out, source.get("files", {}))
        tokenizer_note = "the imported tokenizer files" if source.get("files") else "no tokenizer (pass --tokenizer)"
    return (
        f"wrote {out}: Llama of {llm.num_params() / 1e6:.1f}M parameters in {dtype}, rope_theta "
        f"{llm.rope_base:g}, {tokenizer_note}"
    )


def import_llama(hf: str | Path, out: str | Path, drop_rope_scaling: bool = False, overwrite: bool = False) -> str:
    """Write a Hugging Face Llama folder (``config.json`` + safetensors) as a checkpoint the stages start from.

    Args:
        hf: the folder ``save_pretrained`` wrote (or a Hub snapshot), safetensors in one file or shards.
        out: the ``.ckpt`` file to write.
        drop_rope_scaling: accept a config with RoPE scaling and convert it to plain RoPE (see
            :func:`~mm_lightning.interop.llama_layout.llm_config_from_llama`).
        overwrite: replace ``out`` if it exists.

    Returns:
        A one-line summary, with the settings that start stage 1 or alignment from it.
    """
    check_output(Path(out), overwrite)
    hf_config = read_config(hf)
    config = llm_config_from_llama(hf_config, drop_rope_scaling)
    tensors = {name: t for name, t in read_safetensors(hf).items() if not name.endswith(IGNORED_SUFFIXES)}
    head = tensors.get("lm_head.weight")
    if config.tie_embeddings and head is not None:  # some tied checkpoints store the head anyway
        if not torch.equal(head, tensors.get("model.embed_tokens.weight", head[:0])):
            raise ConversionError(f"{hf}: config.json ties the embeddings but lm_head.weight differs from them")
        del tensors["lm_head.weight"]
    check_tensors(tensors, llama_shapes(config), str(hf), "the Llama its config.json describes")
    files = read_tokenizer_files(hf)
    converted_from: dict[str, Any] = {
        "format": FORMAT,
        "path": str(hf),
        "dtype": str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch."),
        "token_ids": {name: hf_config.get(name) for name in TOKEN_ID_FIELDS},
        "max_position_embeddings": hf_config.get("max_position_embeddings"),
        "files": files,
    }
    meta = {"rope_base": config.rope_base}
    if "tokenizer.json" in files:
        try:  # a tokenizer with the project's special tokens at ids 0..4 (e.g. from export-llama) is recorded
            meta["tokenizer"] = tokenizer_from_str(files["tokenizer.json"], f"{hf}/tokenizer.json").to_str()
        except TokenizerError:
            pass  # another vocabulary: kept in converted_from for the export only
    save_backbones(out, {"llm": (config, llm_state(tensors, config))}, converted_from, **meta)
    params = sum(t.numel() for t in tensors.values()) / 1e6
    return (
        f"wrote {out}: LLM of {params:.1f}M parameters, rope_base {config.rope_base:g}; start stage 1 from it "
        f"with --model.init_args.llm_checkpoint {out} (alignment and the joint stages: llm_checkpoint)"
    )


def register_llama_preset(name: str, hf_dir: str | Path, drop_rope_scaling: bool = False) -> LLMConfig:
    """Register ``llm/<name>``: the architecture of a Llama folder's ``config.json`` (fresh weights when built).

    Returns:
        The preset's config.
    """
    config = llm_config_from_llama(read_config(hf_dir), drop_rope_scaling)
    register_preset("llm", name)(lambda: dataclasses.replace(config))
    return config
