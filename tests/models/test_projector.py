"""The projector: pixel-shuffle shapes, padding and sub-slot order, token counts, presets, gradients."""

import pytest
import torch

from mm_lightning import build_backbone, get_preset, list_backbones
from mm_lightning.models import Projector, ProjectorConfig
from mm_lightning.models.projector import pixel_shuffle
from mm_lightning.models.vit import split_grids


def micro(**overrides) -> Projector:
    torch.manual_seed(0)
    return build_backbone("projector", "tiny", **{"vision_dim": 8, "llm_dim": 16, **overrides})


@pytest.mark.parametrize(("h", "w", "factor", "out_hw"), [(4, 6, 2, (2, 3)), (5, 7, 2, (3, 4)), (7, 3, 3, (3, 1))])
def test_pixel_shuffle_shapes(h, w, factor, out_hw):
    assert pixel_shuffle(torch.randn(h, w, 5), factor).shape == (*out_hw, 5 * factor**2)


def test_pixel_shuffle_sub_slots_are_row_major():
    grid = torch.arange(4 * 4).float().reshape(4, 4, 1)  # patch (r, c) holds the value 4r + c
    merged = pixel_shuffle(grid, 2)  # [2, 2, 4]
    assert merged[0, 0].tolist() == [0, 1, 4, 5]  # (0,0) (0,1) (1,0) (1,1)
    assert merged[0, 1].tolist() == [2, 3, 6, 7]
    assert merged[1, 0].tolist() == [8, 9, 12, 13]
    assert merged[1, 1].tolist() == [10, 11, 14, 15]


def test_pixel_shuffle_keeps_features_together():
    grid = torch.randn(2, 2, 3)
    merged = pixel_shuffle(grid, 2)[0, 0]  # [12]
    for slot, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        torch.testing.assert_close(merged[slot * 3 : (slot + 1) * 3], grid[r, c])


def test_odd_grids_are_padded_with_zeros_not_dropped():
    grid = torch.arange(1, 5 * 7 + 1).float().reshape(5, 7, 1)  # every real patch is non-zero
    merged = pixel_shuffle(grid, 2)  # [3, 4, 4]
    assert merged.shape == (3, 4, 4)
    assert sorted(merged[merged != 0].tolist()) == grid.flatten().tolist()  # each real patch exactly once
    assert merged[2, :, 2:].eq(0).all()  # bottom row of blocks: the lower sub-slots are padding
    assert merged[:, 3, 1::2].eq(0).all()  # right column of blocks: the right sub-slots are padding
    assert merged[2, 3].tolist() == [35, 0, 0, 0]  # the corner block holds only patch (4, 6)
    assert merged[:2, :3].ne(0).all()  # interior blocks are all real


def test_factor_one_is_identity():
    grid = torch.randn(3, 5, 4)
    torch.testing.assert_close(pixel_shuffle(grid, 1), grid)


def test_output_shapes_match_num_tokens():
    projector = micro()
    sizes = [(4, 6), (5, 7), (1, 1), (3, 2)]
    grids = [torch.randn(h, w, 8) for h, w in sizes]
    outputs = projector(grids)
    assert len(outputs) == len(sizes)
    for out, (h, w) in zip(outputs, sizes):
        assert out.shape == (projector.num_tokens(h, w), 16)
    assert projector.merged_grid(5, 7) == (3, 4)
    assert projector.num_tokens(5, 7) == 12
    assert micro(shuffle_factor=3).num_tokens(7, 3) == 3


def test_images_are_projected_independently():
    projector = micro().eval()
    grids = [torch.randn(5, 7, 8), torch.randn(2, 4, 8)]
    together = projector(grids)
    for grid, out in zip(grids, together):
        torch.testing.assert_close(projector([grid])[0], out)


def test_padded_sub_slots_stay_zero_after_the_norm():
    projector = micro()
    torch.nn.init.normal_(projector.norm.bias)  # a non-zero bias must not leak into the padding
    seen = {}
    projector.fc1.register_forward_hook(lambda module, args, out: seen.update(tokens=args[0]))
    projector([torch.randn(3, 3, 8)])
    corner = seen["tokens"][-1]  # merged token of block (1, 1): only patch (2, 2) is real
    assert corner[8:].eq(0).all() and corner[:8].ne(0).all()


def test_matches_vit_split_grids():
    projector = micro()
    grid_hw = torch.tensor([[4, 6], [3, 5]])
    features = torch.randn(1, 24 + 15, 8)
    outputs = projector(split_grids(features, grid_hw))
    assert [out.shape[0] for out in outputs] == [projector.num_tokens(h, w) for h, w in grid_hw.tolist()]


def test_rejects_the_wrong_width():
    with pytest.raises(ValueError, match=r"\[h, w, 8\]"):
        micro()([torch.randn(2, 2, 7)])


def test_every_preset_builds_on_meta_and_fits_its_backbones():
    pairs = {"tiny": ("tiny", "tiny"), "small": ("small", "small"), "so400m": ("so400m", "1b")}
    assert set(list_backbones()["projector"]) == set(pairs)
    for name, (vit, llm) in pairs.items():
        config = get_preset("projector", name)
        assert config.vision_dim == get_preset("vit", vit).d_model
        assert config.llm_dim == get_preset("llm", llm).d_model
        assert config.merged_dim == 4 * config.vision_dim
        with torch.device("meta"):
            projector = build_backbone("projector", name)
        out = projector([torch.empty(5, 7, config.vision_dim, device="meta")])[0]
        assert out.shape == (12, config.llm_dim)


def test_merged_dim_is_derived():
    assert ProjectorConfig(vision_dim=10, llm_dim=4, shuffle_factor=3).merged_dim == 90
    assert micro(shuffle_factor=3).fc1.in_features == 72


def test_gradient_flows_to_inputs_and_every_parameter():
    projector = micro()
    grids = [torch.randn(5, 7, 8, requires_grad=True), torch.randn(2, 2, 8, requires_grad=True)]
    sum(out.square().sum() for out in projector(grids)).backward()
    for name, param in projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(grid.grad is not None and grid.grad.abs().sum() > 0 for grid in grids)
