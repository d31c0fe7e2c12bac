"""The vision encoder: presets, patch grids, packed == alone, interpolated positions, 2-D RoPE, split_grids."""

import pytest
import torch

from mm_lightning import build_backbone
from mm_lightning.models import ViT
from mm_lightning.models.vit import split_grids
from mm_lightning.ops.patches import fit_to_patch_grid, image_to_patches, pack_patches
from mm_lightning.ops.rope import apply_rope, grid_position_ids, rope_2d_cos_sin


def micro(**overrides) -> ViT:
    torch.manual_seed(0)
    fields = dict(patch_size=8, d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_patches=64, pos_grid=6)
    return build_backbone("vit", "tiny", **{**fields, **overrides}).eval()


def make_images(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(3, h, w, generator=generator) for h, w in sizes]


def pack(images: list[torch.Tensor], patch_size: int = 8, max_patches: int = 64) -> dict:
    encoded = [image_to_patches(image, patch_size, max_patches) for image in images]
    return pack_patches([patches for patches, _ in encoded], [grid for _, grid in encoded])


def packed_images(sizes: list[tuple[int, int]]) -> dict:
    return pack(make_images(sizes))


@pytest.mark.parametrize(
    ("name", "expected_millions", "tolerance"),
    [("tiny", 0.9, 0.1), ("small", 22.0, 0.05), ("so400m", 400.0, 0.1)],
)
def test_preset_parameter_counts(name, expected_millions, tolerance):
    with torch.device("meta"):
        vit = build_backbone("vit", name)
    assert vit.num_params() / 1e6 == pytest.approx(expected_millions, rel=tolerance)
    assert vit.flops_per_patch(256) == 3 * vit.flops_per_patch(256, training=False) > 6 * vit.num_params(True) * 0.9


def test_so400m_has_siglip_shapes():
    with torch.device("meta"):
        cfg = build_backbone("vit", "so400m").config
    assert (cfg.patch_size, cfg.d_model, cfg.n_heads, cfg.mlp_hidden, cfg.head_dim) == (14, 1152, 16, 4304, 72)


@pytest.mark.parametrize("size", [(64, 64), (192, 100), (100, 192), (3000, 2000), (1000, 14), (13, 900), (5, 5)])
@pytest.mark.parametrize("multiple", [1, 2])
def test_fit_to_patch_grid_respects_cap_rounding_and_aspect(size, multiple):
    height, width = size
    grid_h, grid_w = fit_to_patch_grid(height, width, 14, 256, multiple=multiple)
    assert grid_h * grid_w <= 256 and grid_h >= 1 and grid_w >= 1
    assert grid_h % multiple == 0 and grid_w % multiple == 0
    assert grid_h <= max(multiple, round(height / 14 / multiple) * multiple)  # never scaled up
    assert grid_w <= max(multiple, round(width / 14 / multiple) * multiple)
    if min(grid_h, grid_w) >= 6:
        assert grid_h / grid_w == pytest.approx(height / width, rel=0.25)


def test_fit_to_patch_grid_examples():
    assert fit_to_patch_grid(64, 64, 14, 256) == (5, 5)  # 4.57 patches a side, rounded, not enlarged
    assert fit_to_patch_grid(140, 280, 14, 1000) == (10, 20)  # fits: unchanged
    assert fit_to_patch_grid(1400, 2800, 14, 200) == (10, 20)  # scaled down to the cap exactly
    assert fit_to_patch_grid(10, 5000, 14, 64) == (1, 64)  # thin strips stay one patch high
    assert fit_to_patch_grid(10, 5000, 14, 64, min_side_patches=2) == (2, 32)
    with pytest.raises(ValueError, match="cannot hold"):
        fit_to_patch_grid(100, 100, 14, 3, min_side_patches=2)


def test_image_to_patches_is_row_major_channel_first():
    image = torch.randn(3, 24, 40)  # already a 3x5 grid of 8-pixel patches: no resize
    patches, grid = image_to_patches(image, 8, 64)
    assert grid == (3, 5) and patches.shape == (15, 3 * 8 * 8)
    assert torch.equal(patches[1 * 5 + 3], image[:, 8:16, 24:32].flatten())
    resized, grid = image_to_patches(torch.randn(3, 100, 37), 8, 64)  # resized to 12x5 patches of 8 pixels
    assert grid == fit_to_patch_grid(100, 37, 8, 64) == (12, 5) and resized.shape == (60, 192)
    _, grid = image_to_patches(torch.randn(3, 100, 37), 8, 64, multiple=2)
    assert grid == (12, 4)


def test_pack_patches_layout():
    batch = packed_images([(24, 40), (16, 16), (40, 8)])
    assert batch["patches"].shape == (1, 15 + 4 + 5, 192)
    assert batch["grid_hw"].tolist() == [[3, 5], [2, 2], [5, 1]]
    assert batch["seq_ids"].tolist() == [[0] * 15 + [1] * 4 + [2] * 5]
    with pytest.raises(ValueError, match="do not fill"):
        pack_patches([torch.zeros(5, 192)], [(2, 2)])


def test_image_alone_equals_image_packed_with_others():
    vit = micro()
    images = make_images([(40, 24), (48, 64), (16, 56)])
    packed, alone = pack(images), pack(images[1:2])
    assert torch.equal(alone["patches"][0], packed["patches"][0, 15:63])  # same image, same patches
    with torch.no_grad():
        out_packed = vit(**packed)  # [1, N, d]
        out_alone = vit(**alone)
        out_default_ids = vit(packed["patches"], packed["grid_hw"])  # seq_ids derived from grid_hw
    assert out_packed.shape == (1, 15 + 48 + 14, 64)
    torch.testing.assert_close(
        split_grids(out_packed, packed["grid_hw"])[1], split_grids(out_alone, alone["grid_hw"])[0], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out_default_ids, out_packed, atol=0, rtol=0)


def test_without_seq_ids_packed_images_leak_into_each_other():
    vit = micro()
    packed = packed_images([(40, 24), (48, 64), (16, 56)])
    with torch.no_grad():
        separate = vit(**packed)
        mixed = vit(packed["patches"], packed["grid_hw"], torch.zeros_like(packed["seq_ids"]))  # one sequence
    assert (separate - mixed).abs().max() > 1e-3


def test_position_embedding_interpolation():
    vit = micro()
    assert vit.interpolate_pos_embed(3, 7).shape == (3, 7, 64)
    assert torch.equal(vit.interpolate_pos_embed(6, 6), vit.pos_embed)
    with torch.no_grad():
        vit.pos_embed.fill_(0.5)
    torch.testing.assert_close(vit.interpolate_pos_embed(3, 7), torch.full((3, 7, 64), 0.5))  # constant stays
    assert vit.position_embeddings(torch.tensor([[3, 7], [6, 6], [3, 7]])).shape == (21 + 36 + 21, 64)


def test_grid_position_ids_restart_per_image():
    positions = grid_position_ids(torch.tensor([[2, 3], [1, 2]]))
    assert positions.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [0, 0], [0, 1]]


def test_rope_2d_preserves_norms_and_depends_on_relative_offset_only():
    head_dim, side = 16, 7
    cos, sin = rope_2d_cos_sin(torch.tensor([[side, side]]), head_dim, 100.0, torch.float64)  # [1, 1, 49, 16]
    assert cos.shape == (1, 1, side * side, head_dim)
    torch.manual_seed(0)
    q, k = torch.randn(2, head_dim, dtype=torch.float64)
    q_rot = apply_rope(q.expand(1, 1, side * side, head_dim), cos, sin)[0, 0]  # [49, 16], q at every position
    k_rot = apply_rope(k.expand(1, 1, side * side, head_dim), cos, sin)[0, 0]
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm().expand(side * side))

    def score(q_pos: tuple[int, int], k_pos: tuple[int, int]) -> torch.Tensor:
        return q_rot[q_pos[0] * side + q_pos[1]] @ k_rot[k_pos[0] * side + k_pos[1]]

    for shift in [(1, 0), (0, 2), (3, 4)]:  # the same pair of patches, shifted together over the grid
        for q_pos, k_pos in [((0, 0), (2, 1)), ((1, 2), (0, 0)), ((2, 2), (2, 2))]:
            shifted = [(r + shift[0], c + shift[1]) for r, c in (q_pos, k_pos)]
            torch.testing.assert_close(score(q_pos, k_pos), score(*shifted))
    assert not torch.allclose(score((0, 0), (0, 1)), score((0, 0), (1, 0)))  # rows and columns both encoded


def test_split_grids_round_trips():
    grid_hw = torch.tensor([[3, 5], [2, 2], [1, 4]])
    features = torch.randn(1, 15 + 4 + 4, 8)
    grids = split_grids(features, grid_hw)
    assert [tuple(g.shape) for g in grids] == [(3, 5, 8), (2, 2, 8), (1, 4, 8)]
    assert torch.equal(torch.cat([g.flatten(0, 1) for g in grids])[None], features)
    assert torch.equal(grids[0][1, 3], features[0, 1 * 5 + 3])  # row-major


def test_backward_reaches_every_parameter():
    vit = micro().train()
    vit(**packed_images([(40, 24), (16, 56)])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters())
