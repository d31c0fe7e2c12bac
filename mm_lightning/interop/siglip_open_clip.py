"""An open_clip SigLIP vision tower as the ViT: the timm ``VisionTransformer`` trunk of ``open_clip.create_model``.

open_clip's SigLIP models (``ViT-B-16-SigLIP``, ``ViT-SO400M-14-SigLIP-384``, ...) wrap a timm ViT with no class
token and MAP pooling. Its trunk has the ViT's layout already: a conv patch embedding, a ``[1, N, d]`` position
table, fused ``attn.qkv`` and pre-norm blocks, then the final ``norm``; the attention-pool head is left out, so the
ViT's output is the trunk's ``forward_features``. The GELU follows the trunk (exact in some timm SigLIP towers,
tanh-approximated in others), and so does the LayerNorm epsilon. open_clip's own ViT (class token, ``ln_pre``) and
trunks with register tokens or layer scale are refused: the ViT cannot compute them.

Nothing is downloaded: ``NAME:WEIGHTS`` builds ``NAME`` with random weights and loads a local state dict
(``.pt``/``.bin``/``.safetensors``; the whole model's or its ``visual`` tower's), ``local-dir:FOLDER`` reads a
folder in open_clip's own layout.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from mm_lightning.errors import one_line
from mm_lightning.interop.files import ConversionError, check_tensors
from mm_lightning.models.vit import ViTConfig

GELU_CLASSES = {"GELU": "none", "GELUTanh": "tanh"}
"""timm's GELU modules and the ViT's ``gelu_approximate`` that computes them (``nn.GELU`` says it itself)."""


def load_open_clip_tower(spec: str) -> nn.Module:
    """The vision tower of ``NAME:WEIGHTS`` or ``local-dir:FOLDER``, weights loaded, in eval mode."""
    if spec.startswith("hf-hub:"):
        raise ConversionError(
            f"--open-clip {spec!r} would download; fetch the folder yourself and pass local-dir:FOLDER"
        )
    name, _, weights = spec.partition(":") if not spec.startswith("local-dir:") else (spec, "", "")
    if not weights and not spec.startswith("local-dir:"):
        raise ConversionError(f"--open-clip {spec!r}: name the weights, NAME:STATE.pt (nothing is downloaded)")
    if name not in open_clip.list_models() and not name.startswith("local-dir:"):
        raise ConversionError(f"open_clip has no model {name!r}; its SigLIP ones: {_siglip_names()}")
    try:
        model = open_clip.create_model(name, pretrained=None)
    except (ValueError, RuntimeError) as error:  # a local-dir config open_clip cannot read
        raise ConversionError(f"open_clip cannot build {name} ({one_line(str(error))})") from None
    if weights:
        state = _read_state(Path(weights))
        target = model if any(key.startswith("visual.") for key in state) else model.visual
        expected = {key: tuple(value.shape) for key, value in target.state_dict().items()}
        check_tensors(state, expected, weights, f"open_clip's {name}")
        target.load_state_dict(state)
    return model.visual.eval()


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConversionError(f"open_clip weights {path} do not exist")
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)  # an open_clip training checkpoint
    return {key.removeprefix("module."): value for key, value in state.items()}


def _siglip_names() -> str:
    return ", ".join(name for name in open_clip.list_models() if "SigLIP" in name and "SigLIP2" not in name)


def _trunk_problems(trunk: nn.Module) -> list[str]:
    """What a timm ViT trunk has that the ViT cannot compute (empty when it converts exactly)."""
    problems = []
    if getattr(trunk, "num_prefix_tokens", 0):
        problems.append(f"{trunk.num_prefix_tokens} class/register token(s)")
    embed = trunk.patch_embed
    if (
        embed.proj.kernel_size != embed.proj.stride
        or embed.proj.bias is None
        or embed.grid_size[0] != embed.grid_size[1]
    ):
        problems.append("a patch embedding other than a square-grid conv with bias")
    for part in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(trunk, part), nn.Identity):
            problems.append(f"a {part}")
    if not isinstance(trunk.norm, nn.LayerNorm):
        problems.append("no final LayerNorm")
    for i, block in enumerate(trunk.blocks):
        extras = [
            name
            for name in ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm")
            if not isinstance(block.get_submodule(name), nn.Identity)
        ]
        if extras or _gelu(block.mlp.act) is None or block.attn.qkv.bias is None:
            problems.append(f"block {i} with {extras or 'another activation or no qkv bias'}")
    eps = {module.eps for module in trunk.modules() if isinstance(module, nn.LayerNorm)}
    if len(eps) > 1:
        problems.append(f"LayerNorms of different epsilons {sorted(eps)}")
    return problems


def _gelu(act: nn.Module) -> str | None:
    if isinstance(act, nn.GELU):
        return act.approximate
    return GELU_CLASSES.get(type(act).__name__)


def vit_config_from_tower(tower: nn.Module, source: str) -> ViTConfig:
    """The ViT config (native position grid, no 2-D RoPE) of an open_clip vision tower, or a one-line refusal."""
    trunk = getattr(tower, "trunk", None)
    if trunk is None or type(trunk).__name__ != "VisionTransformer" or not type(trunk).__module__.startswith("timm."):
        raise ConversionError(
            f"{source}'s vision tower is {type(tower).__name__}, not a timm SigLIP trunk (open_clip's own ViT has a "
            f"class token and ln_pre, which the ViT has not); SigLIP models: {_siglip_names()}"
        )
    problems = _trunk_problems(trunk)
    if problems:
        raise ConversionError(f"{source}'s timm trunk has what the ViT cannot compute: {'; '.join(problems)}")
    grid = trunk.patch_embed.grid_size[0]
    return ViTConfig(
        patch_size=trunk.patch_embed.proj.kernel_size[0],
        d_model=trunk.embed_dim,
        n_layers=len(trunk.blocks),
        n_heads=trunk.blocks[0].attn.num_heads,
        mlp_hidden=trunk.blocks[0].mlp.fc1.out_features,
        max_patches=grid * grid,
        pos_grid=grid,
        norm_eps=trunk.norm.eps,
        rope_2d=False,
        gelu_approximate=_gelu(trunk.blocks[0].mlp.act),
    )


def vit_state_from_trunk(trunk: nn.Module, config: ViTConfig) -> dict[str, Tensor]:
    """The ViT state dict of a timm trunk that :func:`vit_config_from_tower` accepted (MAP head left out)."""
    d, grid = config.d_model, config.pos_grid
    tensors = {name: value.detach() for name, value in trunk.state_dict().items()}
    state = {
        "patch_embed.weight": tensors.pop("patch_embed.proj.weight").reshape(d, -1),  # [d, 3 * p * p]
        "patch_embed.bias": tensors.pop("patch_embed.proj.bias"),
        "pos_embed": tensors.pop("pos_embed").reshape(grid, grid, d),
        "norm.weight": tensors.pop("norm.weight"),
        "norm.bias": tensors.pop("norm.bias"),
    }
    renames = {".norm1.": ".attn_norm.", ".norm2.": ".mlp_norm."}
    for name, value in tensors.items():
        if name.startswith("blocks."):
            for theirs, ours in renames.items():
                name = name.replace(theirs, ours)
            state[name] = value
    return state


def read_open_clip(spec: str) -> tuple[ViTConfig, dict[str, Tensor]]:
    """The ViT config and state dict of an open_clip SigLIP tower, ``NAME:WEIGHTS`` or ``local-dir:FOLDER``."""
    tower = load_open_clip_tower(spec)
    config = vit_config_from_tower(tower, spec)
    return config, vit_state_from_trunk(tower.trunk, config)
