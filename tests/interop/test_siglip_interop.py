"""SigLIP vision towers from Hugging Face and open_clip (random weights) as the ViT: with its 2-D RoPE off, the
same patch features as the original at its native resolution (and, through the bicubic position table, at others);
the ViT + projector export read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
from helpers.tiny_hf import randomize, siglip_folder  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models import register_model  # noqa: E402

from mm_lightning import build_backbone  # noqa: E402
from mm_lightning.checkpoint import image_preprocessing, load_backbone  # noqa: E402
from mm_lightning.interop.checkpoints import save_backbones  # noqa: E402
from mm_lightning.interop.files import ConversionError  # noqa: E402
from mm_lightning.interop.siglip_open_clip import vit_config_from_tower  # noqa: E402
from mm_lightning.interop.vision import export_vision, import_vit  # noqa: E402
from mm_lightning.models.registry import get_preset  # noqa: E402
from mm_lightning.ops.patches import image_to_patches, pack_patches  # noqa: E402

TIMM_TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 32}


@register_model
def vit_interoptest_siglip_exact_gelu(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """timm's SigLIP-B/16 trunk (exact GELU), shrunk: 2 blocks of width 64 over a 2x2 grid."""
    return timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **{**TIMM_TINY, **kwargs})


@register_model
def vit_interoptest_siglip_tanh_gelu(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """timm's SigLIP-B/32 trunk (tanh GELU), shrunk: 2 blocks of width 64 over a 2x2 grid (64 pixels)."""
    return timm.create_model("vit_base_patch32_siglip_256", pretrained=False, **{**TIMM_TINY, "img_size": 64, **kwargs})


def open_clip_config(timm_name: str, image_size: int) -> dict:
    """An open_clip SigLIP config around a timm trunk, with a one-layer text tower."""
    return {
        "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": image_size, "timm_model_name": timm_name, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 2, "layers": 1,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
    }  # fmt: skip


def pixels(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def vit_features(ckpt: Path, image: torch.Tensor) -> torch.Tensor:
    vit = load_backbone(ckpt, "vit").eval()
    patches, grid = image_to_patches(image[0], vit.config.patch_size, max_patches=10_000)
    batch = pack_patches([patches], [grid])
    with torch.no_grad():
        return vit(batch["patches"], batch["grid_hw"], batch["seq_ids"])[0]  # [N, d]


def hf_features(folder: Path, image: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    model = transformers.SiglipVisionModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=image, interpolate_pos_encoding=interpolate).last_hidden_state[0]


@pytest.mark.parametrize("hidden_act", ["gelu_pytorch_tanh", "gelu"])
def test_hf_siglip_gives_the_same_features(tmp_path, hidden_act):
    folder = siglip_folder(tmp_path, hidden_act=hidden_act)
    print(import_vit(tmp_path / "vit.ckpt", hf=str(folder)))
    image = pixels(32, 32)
    expected = hf_features(folder, image)
    torch.testing.assert_close(vit_features(tmp_path / "vit.ckpt", image), expected, atol=1e-5, rtol=1e-5)
    preprocessing = image_preprocessing(str(tmp_path / "vit.ckpt"))
    assert (preprocessing.patch_size, preprocessing.max_patches) == (8, 1024)


def test_position_table_interpolates_as_siglip_does(tmp_path):
    folder = siglip_folder(tmp_path)
    import_vit(tmp_path / "vit.ckpt", hf=str(folder))
    image = pixels(48, 40)  # a 6x5 grid from the native 4x4 table
    expected = hf_features(folder, image, interpolate=True)
    torch.testing.assert_close(vit_features(tmp_path / "vit.ckpt", image), expected, atol=1e-5, rtol=1e-5)


def test_rope_2d_and_a_resized_table_change_the_features(tmp_path):
    folder = siglip_folder(tmp_path)
    image = pixels(32, 32)
    import_vit(tmp_path / "rope.ckpt", hf=str(folder), rope_2d=True, pos_grid=6, max_patches=256)
    vit = load_backbone(tmp_path / "rope.ckpt", "vit")
    assert (vit.config.rope_2d, vit.config.pos_grid, tuple(vit.pos_embed.shape)) == (True, 6, (6, 6, 64))
    assert image_preprocessing(str(tmp_path / "rope.ckpt")).max_patches == 256
    assert (vit_features(tmp_path / "rope.ckpt", image) - hf_features(folder, image)).abs().max() > 1e-2


@pytest.mark.parametrize(("variant", "image_size"), [("exact_gelu", 32), ("tanh_gelu", 64)])
def test_open_clip_siglip_gives_the_same_features(tmp_path, variant, image_size):
    name = f"InteropTest-SigLIP-{variant}"
    config = open_clip_config(f"vit_interoptest_siglip_{variant}", image_size)
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    model = open_clip.create_model(name, pretrained=None)
    randomize(model.visual, seed=3)
    if variant == "exact_gelu":  # a built-in name (here: a registered one) and a state dict
        torch.save(model.state_dict(), tmp_path / "weights.pt")
        import_vit(tmp_path / "vit.ckpt", open_clip=f"{name}:{tmp_path / 'weights.pt'}")
    else:  # open_clip's own folder layout
        (tmp_path / "oc").mkdir()
        (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
        save_file(model.state_dict(), tmp_path / "oc" / "open_clip_model.safetensors")
        import_vit(tmp_path / "vit.ckpt", open_clip=f"local-dir:{tmp_path / 'oc'}")
    expected_gelu = {"exact_gelu": "none", "tanh_gelu": "tanh"}[variant]
    assert load_backbone(tmp_path / "vit.ckpt", "vit").config.gelu_approximate == expected_gelu
    image = pixels(image_size, image_size)
    with torch.no_grad():
        expected = model.visual.trunk.eval().forward_features(image)[0]  # [4, 64], before the MAP head
    torch.testing.assert_close(vit_features(tmp_path / "vit.ckpt", image), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConversionError, match="name the weights"):
        import_vit(tmp_path / "other.ckpt", open_clip=name)


def test_open_clip_siglip_towers_have_the_presets_shapes_and_others_are_refused():
    with torch.device("meta"):  # no weights computed: the structure is all that is read
        so400m = open_clip.create_model("ViT-SO400M-14-SigLIP-384", pretrained=None, device="meta").visual
        clip = open_clip.create_model("ViT-S-32", pretrained=None, device="meta").visual
    config = vit_config_from_tower(so400m, "ViT-SO400M-14-SigLIP-384")
    preset = get_preset("vit", "so400m")
    fields = ("patch_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "pos_grid", "norm_eps")
    assert [getattr(config, f) for f in fields] == [getattr(preset, f) for f in fields]
    with pytest.raises(ConversionError, match="ViT-S-32's vision tower is VisionTransformer, not a timm SigLIP trunk"):
        vit_config_from_tower(clip, "ViT-S-32")


def test_vision_export_reads_back_unchanged(tmp_path):
    torch.manual_seed(0)
    vit = randomize(build_backbone("vit", "tiny", n_layers=1, d_model=64, n_heads=2, mlp_hidden=96))
    projector = randomize(build_backbone("projector", "tiny", vision_dim=64, llm_dim=32))
    backbones = {"vit": (vit.config, vit.state_dict()), "projector": (projector.config, projector.state_dict())}
    save_backbones(tmp_path / "align.ckpt", backbones, {"format": "test"},
                   image_preprocessing={"patch_size": 14, "max_patches": 36})  # fmt: skip
    export_vision(tmp_path / "align.ckpt", tmp_path / "vision")
    config = json.loads((tmp_path / "vision" / "config.json").read_text())
    assert (
        config["image_preprocessing"] == {"patch_size": 14, "max_patches": 36} and config["projector"]["llm_dim"] == 32
    )
    import_vit(tmp_path / "back.ckpt", exported=str(tmp_path / "vision"))
    for kind, module in (("vit", vit), ("projector", projector)):
        back = load_backbone(tmp_path / "back.ckpt", kind).state_dict()
        assert all(torch.equal(back[name], value) for name, value in module.state_dict().items()), kind
    assert image_preprocessing(str(tmp_path / "back.ckpt")).max_patches == 36


def test_hf_refusals_name_what_differs(tmp_path):
    folder = siglip_folder(tmp_path, hidden_act="quick_gelu")
    with pytest.raises(ConversionError, match="hidden_act 'quick_gelu'"):
        import_vit(tmp_path / "a.ckpt", hf=str(folder))
    folder = siglip_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ConversionError, match=r"missing \[encoder.layers.2.layer_norm1.bias"):
        import_vit(tmp_path / "b.ckpt", hf=str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "siglip2_vision_model"}))
    with pytest.raises(ConversionError, match="model_type 'siglip2_vision_model'"):
        import_vit(tmp_path / "c.ckpt", hf=str(folder))
