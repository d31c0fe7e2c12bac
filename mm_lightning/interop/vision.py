"""ViT towers in and out: ``convert import-vit`` and ``convert export-vision``.

Kimi-VL initialises its ViT from SigLIP-SO400M; ``import-vit`` does the same for the project's ViT from a Hugging
Face SigLIP folder, an open_clip SigLIP tower, or a folder ``export-vision`` wrote. The learned position table
comes in at its native grid; ``--pos-grid`` resizes it with the ViT's own bicubic interpolation (the one every
image's grid gets, as MoonViT does). The ViT's 2-D RoPE stays off unless ``--rope-2d`` asks for it (MoonViT adds it
to SigLIP and trains on); off, the converted tower gives the original's features at its native resolution.

``export-vision`` writes a ViT checkpoint's ViT and, when it has one, its projector as ``model.safetensors``
(``vit.*``, ``projector.*``) with a ``config.json`` holding both configs and the image preprocessing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mm_lightning.checkpoint import checkpoint_meta, image_preprocessing, load_backbone, load_checkpoint
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
from mm_lightning.interop.siglip_hf import read_siglip
from mm_lightning.interop.siglip_open_clip import read_open_clip
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.registry import build_from_config, config_from_dict
from mm_lightning.models.vit import ViT, ViTConfig

VISION_FORMAT = "mm_lightning-vision"
"""``config.json``'s ``format`` in a folder ``export-vision`` wrote."""
SIGLIP_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
"""Pixels in [-1, 1], as SigLIP and the project's image preprocessing (``media/images.py``) have them."""


def read_exported(folder: str | Path) -> tuple[dict[str, torch.nn.Module], ImagePreprocessing]:
    """The backbones (``vit``, maybe ``projector``) and image preprocessing of a folder ``export-vision`` wrote."""
    config = read_config(folder)
    if config.get("format") != VISION_FORMAT:
        raise ConversionError(f"{folder}/config.json is not an export-vision config (format {config.get('format')!r})")
    kinds = [kind for kind in ("vit", "projector") if kind in config]
    modules = {kind: build_from_config(kind, config_from_dict(kind, config[kind])) for kind in kinds}
    expected = {f"{kind}.{name}": tuple(t.shape) for kind, m in modules.items() for name, t in m.state_dict().items()}
    tensors = read_safetensors(folder)
    check_tensors(tensors, expected, str(folder), f"the {' and '.join(kinds)} its config.json describes")
    for kind, module in modules.items():
        module.load_state_dict({name[len(kind) + 1 :]: t for name, t in tensors.items() if name.startswith(f"{kind}.")})
    return modules, ImagePreprocessing(**config["image_preprocessing"])


def import_vit(
    out: str | Path,
    hf: str | None = None,
    open_clip: str | None = None,
    exported: str | None = None,
    pos_grid: int | None = None,
    max_patches: int | None = None,
    rope_2d: bool | None = None,
    overwrite: bool = False,
) -> str:
    """Write a ViT (and an exported projector) from one source as a checkpoint alignment or a joint stage starts from.

    Args:
        out: the ``.ckpt`` file to write.
        hf: a Hugging Face SigLIP folder.
        open_clip: an open_clip tower, ``NAME:WEIGHTS`` or ``local-dir:FOLDER``.
        exported: a folder ``export-vision`` wrote.
        pos_grid: side of the position table to keep (default: the source's).
        max_patches: cap on patches per image (default: the source's, at least the ViT default 1024 for SigLIP).
        rope_2d: add (True) or remove (False) the 2-D RoPE (default: the source's; none in SigLIP).
        overwrite: replace ``out`` if it exists.

    Returns:
        A one-line summary.
    """
    if sum(source is not None for source in (hf, open_clip, exported)) != 1:
        raise ConversionError("name one source: --hf, --open-clip or --exported")
    check_output(Path(out), overwrite)
    if exported is not None:
        modules, preprocessing = read_exported(exported)
        source = {"format": VISION_FORMAT, "path": str(exported)}
    else:
        config, state = read_siglip(hf) if hf is not None else read_open_clip(open_clip)
        modules = {"vit": loaded_vit(config, state)}
        max_patches = max_patches or max(config.max_patches, ViTConfig.max_patches)  # SigLIP's grid, or the default
        preprocessing = ImagePreprocessing(config.patch_size, max_patches)
        source = {"format": "hf-siglip" if hf is not None else "open_clip", "path": str(hf or open_clip)}
    vit = modules["vit"] = reshape_vit(modules["vit"], pos_grid, max_patches, rope_2d)
    preprocessing = dataclasses.replace(preprocessing, max_patches=max_patches or preprocessing.max_patches)
    backbones = {kind: (module.config, module.state_dict()) for kind, module in modules.items()}
    save_backbones(out, backbones, source, image_preprocessing=dataclasses.asdict(preprocessing))
    cfg, with_projector = vit.config, "projector" in modules
    start = (
        "the joint stages from it with --model.init_args.vision_checkpoint"
        if with_projector
        else ("alignment from it with --model.init_args.vit_checkpoint")
    )
    return (
        f"wrote {out}: ViT of {vit.num_params() / 1e6:.1f}M parameters, patch {cfg.patch_size}, position grid "
        f"{cfg.pos_grid}, 2-D RoPE {'on' if cfg.rope_2d else 'off'}{' and its projector' * with_projector}; "
        f"start {start} {out}"
    )


def reshape_vit(vit: ViT, pos_grid: int | None, max_patches: int | None, rope_2d: bool | None) -> ViT:
    """``vit`` with its position table resized (bicubic) to ``pos_grid`` and the other fields set; None keeps one."""
    changes: dict[str, Any] = {"pos_grid": pos_grid, "max_patches": max_patches, "rope_2d": rope_2d}
    changes = {name: value for name, value in changes.items() if value is not None}
    if not changes:
        return vit
    state = vit.state_dict()
    if pos_grid is not None:
        with torch.no_grad():
            state["pos_embed"] = vit.interpolate_pos_embed(pos_grid, pos_grid).clone()
    return loaded_vit(dataclasses.replace(vit.config, **changes), state)


def loaded_vit(config: ViTConfig, state: dict[str, torch.Tensor]) -> ViT:
    """A ViT of ``config`` holding ``state`` (its tensors, not copies; no random init is computed)."""
    with torch.device("meta"):
        vit = ViT(config)
    vit.load_state_dict(state, assign=True)
    return vit


def export_vision(ckpt: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> str:
    """Write a checkpoint's ViT and projector as ``model.safetensors`` + ``config.json`` in ``out``.

    Returns:
        A one-line summary.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    meta = checkpoint_meta(load_checkpoint(ckpt), ckpt)
    kinds = [kind for kind in ("vit", "projector") if kind in meta.get("backbones", {})]
    if "vit" not in kinds:
        raise ConversionError(f"{ckpt} has no ViT; it has: {', '.join(meta.get('backbones', {})) or 'no backbones'}")
    out = Path(out)
    check_output(out, overwrite, ("config.json", SAFETENSORS))
    modules = {kind: load_backbone(ckpt, kind) for kind in kinds}
    config: dict[str, Any] = {"format": VISION_FORMAT, "format_version": 1}
    config |= {kind: dataclasses.asdict(module.config) for kind, module in modules.items()}
    config |= {
        "image_preprocessing": dataclasses.asdict(image_preprocessing(meta)),
        "image_normalization": SIGLIP_NORMALIZATION,
    }
    tensors = {
        f"{kind}.{name}": t.to(DTYPES[dtype]) for kind, m in modules.items() for name, t in m.state_dict().items()
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    write_safetensors(out / SAFETENSORS, tensors)
    return f"wrote {out}: {' and '.join(kinds)} in {dtype}"
