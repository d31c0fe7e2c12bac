"""The VLM: image placeholders expand to projected tokens; a packed multimodal row equals its samples alone."""

import pytest
import torch

from mm_lightning import build_backbone
from mm_lightning.data.caption_rows import mask_image_targets
from mm_lightning.models.vlm import VLM, expand_image_placeholders
from mm_lightning.ops.patches import image_to_patches, pack_patches

IMAGE = 2
LLM = {"vocab_size": 97, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 96}
VIT = {"patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_patches": 64, "pos_grid": 8}


def micro_vlm() -> VLM:
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", **LLM)
    vit = build_backbone("vit", "tiny", **VIT)
    projector = build_backbone("projector", "tiny", vision_dim=32, llm_dim=64)
    return VLM(llm, vit, projector, image_token_id=IMAGE).eval()


def sample(vlm: VLM, height: int, width: int, text: list[int], seed: int):
    """One multimodal sample: an image followed by text, placeholders expanded."""
    image = torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))
    patches, grid = image_to_patches(image, 8, 64)
    ids = expand_image_placeholders([IMAGE, *text], [vlm.projector.num_tokens(*grid)], IMAGE)
    return patches, grid, torch.tensor(ids)


def test_packed_multimodal_row_equals_each_sample_alone():
    vlm = micro_vlm()
    samples = [sample(vlm, 40, 24, [5, 6, 7, 8], 0), sample(vlm, 17, 33, [9, 10, 11], 1)]
    with torch.no_grad():
        alone = []
        for patches, grid, ids in samples:
            packed = pack_patches([patches], [grid])
            alone.append(vlm(ids[None], packed["patches"], packed["grid_hw"], packed["seq_ids"])[0])
        images = pack_patches([s[0] for s in samples], [s[1] for s in samples])
        row = torch.cat([s[2] for s in samples])[None]  # [1, T1 + T2]
        seq_ids = torch.cat([torch.full((len(s[2]),), i) for i, s in enumerate(samples)])[None]
        together = vlm(row, images["patches"], images["grid_hw"], images["seq_ids"], seq_ids=seq_ids)[0]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_image_positions_hold_projected_features_and_carry_no_label():
    vlm = micro_vlm()
    patches, grid, ids = sample(vlm, 24, 24, [5, 6], 0)
    assert (ids == IMAGE).sum() == vlm.projector.num_tokens(*grid) == 4  # 3x3 patches -> 2x2 merged
    packed = pack_patches([patches], [grid])
    with torch.no_grad():
        embeds = vlm.embed(ids[None], packed["patches"], packed["grid_hw"], packed["seq_ids"])[0]
        expected = vlm.image_tokens(packed["patches"], packed["grid_hw"], packed["seq_ids"])
    torch.testing.assert_close(embeds[:4], expected)
    torch.testing.assert_close(embeds[4:], vlm.llm.embed(ids[4:]))
    labels = mask_image_targets(ids[1:], IMAGE)
    assert labels.tolist() == [-100, -100, -100, 5, 6]


def test_mismatches_fail_clearly():
    vlm = micro_vlm()
    patches, grid, ids = sample(vlm, 24, 24, [5], 0)
    packed = pack_patches([patches], [grid])
    with pytest.raises(ValueError, match="expand placeholders"):
        vlm.embed(torch.tensor([[IMAGE, 5]]), packed["patches"], packed["grid_hw"])
    with pytest.raises(ValueError, match="no images"):
        vlm.embed(ids[None])
    with pytest.raises(ValueError, match="placeholders for 2 images"):
        expand_image_placeholders([IMAGE, 5], [4, 4], IMAGE)


def test_under_cpu_bf16_autocast_the_llm_runs_bf16_and_the_vit_fp32():
    """``bf16-mixed`` on a CPU: the ViT and projector compute in fp32 (what autocast gives them is slower there),
    the LLM's matmuls in bf16; the image tokens equal the fp32 model's exactly."""
    vlm = micro_vlm()
    patches, grid, ids = sample(vlm, 24, 24, [5, 6], 0)
    packed = pack_patches([patches], [grid])
    dtypes: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module, args, out) -> None:
            dtypes.setdefault(name, out.dtype)

        return hook

    hooks = [vlm.vit.blocks[0].mlp.register_forward_hook(record("vit_block")),
             vlm.llm.blocks[0].mlp.register_forward_hook(record("llm_block"))]  # fmt: skip
    with torch.no_grad():
        fp32 = vlm.image_tokens(packed["patches"], packed["grid_hw"], packed["seq_ids"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = vlm.image_tokens(packed["patches"], packed["grid_hw"], packed["seq_ids"])
            dtypes.clear()
            vlm(ids[None], packed["patches"], packed["grid_hw"], packed["seq_ids"])
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(mixed, fp32, atol=0, rtol=0)
    assert dtypes == {"vit_block": torch.float32, "llm_block": torch.bfloat16}
