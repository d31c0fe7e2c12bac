"""FLOPs of a training step: what trains sets the passes (checked against torch's FLOP counter), per-image ViT
attention, and a VLM step as its LLM tokens plus its images."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mm_lightning import build_backbone
from mm_lightning.models.flops import dense_flops_per_token, step_passes, vit_flops, vlm_step_flops

VIT = {"patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_patches": 64, "pos_grid": 8}
LLM = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "vocab_size": 300}


def projector():
    torch.manual_seed(0)
    return build_backbone("projector", "tiny", vision_dim=8, llm_dim=16)


def counted_step_flops(module, tokens: torch.Tensor) -> int:
    """Matmul FLOPs torch counts for a forward and, when anything needs a gradient, the backward."""
    with FlopCounterMode(display=False) as counter:
        out = module.fc2(module.fc1(tokens))  # the projector's matmuls on already merged tokens
        if out.requires_grad:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("module_trains", "input_needs_grad", "passes"),
    [(True, True, 3.0), (True, False, 3.0), (False, True, 2.0), (False, False, 1.0)],
)
def test_step_passes_match_what_torch_counts(module_trains, input_needs_grad, passes):
    module = projector().requires_grad_(module_trains)
    tokens = torch.randn(5, module.config.merged_dim, requires_grad=input_needs_grad)
    assert step_passes(module, gradients_through=input_needs_grad) == passes
    expected = 5 * dense_flops_per_token(module, step_passes(module, input_needs_grad))
    counted = counted_step_flops(module, tokens)
    if module_trains and not input_needs_grad:
        # torch skips the first layer's input gradient nobody needs; the count assumes it (an upper bound by one
        # layer's input gradient)
        counted += 2 * 5 * module.fc1.weight.numel()
    assert counted == expected


def test_a_partly_trained_module_pays_for_the_gradients_of_its_trained_share():
    module = projector()
    module.fc2.requires_grad_(False)
    module.norm.requires_grad_(False)
    share = sum(p.numel() for p in module.fc1.parameters()) / sum(p.numel() for p in module.parameters())
    assert step_passes(module) == pytest.approx(2.0 + share)


def test_vit_flops_count_each_image_attending_over_its_own_patches():
    vit = build_backbone("vit", "tiny", **VIT)
    grids = torch.tensor([[2, 3], [4, 4]])
    assert vit_flops(vit, grids) == 6 * vit.flops_per_patch(6) + 16 * vit.flops_per_patch(16)
    assert vit_flops(vit, [(2, 3), (4, 4)], 1.0) == vit_flops(vit, grids) / 3
    assert vit_flops(vit, torch.zeros(0, 2, dtype=torch.long)) == 0


def test_a_vlm_step_is_its_llm_tokens_plus_its_images():
    llm, vit = build_backbone("llm", "tiny", **LLM), build_backbone("vit", "tiny", **VIT)
    proj = build_backbone("projector", "tiny", vision_dim=32, llm_dim=32)
    text_only = vlm_step_flops(llm, vit, proj, 64, 32, None)
    assert text_only == 64 * llm.flops_per_token(32)
    grids = torch.tensor([[4, 4], [2, 6]])
    merged = proj.num_tokens(4, 4) + proj.num_tokens(2, 6)
    assert vlm_step_flops(llm, vit, proj, 64, 32, grids) == pytest.approx(
        text_only + vit_flops(vit, grids) + merged * dense_flops_per_token(proj)
    )
    llm.requires_grad_(False)  # the alignment stage: a frozen LLM the vision tower learns through
    aligned = vlm_step_flops(llm, vit, proj, 64, 32, grids)
    assert aligned == pytest.approx(vlm_step_flops(llm.requires_grad_(True), vit, proj, 64, 32, grids) - text_only / 3)
    llm.requires_grad_(False)
    assert vlm_step_flops(llm, vit, proj, 64, 32, None) == text_only / 3  # nothing trains: a forward
