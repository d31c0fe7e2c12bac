"""Packed attention document by document (ops/varlen.py) equals the dense block-diagonal mask, values and grads."""

import pytest
import torch
import torch.nn.functional as F

from mm_lightning.models.registry import build_backbone
from mm_lightning.ops.attention import attention
from mm_lightning.ops.packing import dense_mask_from_seq_ids
from mm_lightning.ops.patches import pack_patches
from mm_lightning.ops.varlen import bucket_of, dense_mask_attention, plan_segments, segmented_attention


def _ids(rows: list[list[int]]) -> torch.Tensor:
    """``[B, T]`` seq_ids from each row's document lengths (rows of equal total length)."""
    return torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)]) for row in rows])


def _dense(q, k, v, seq_ids, causal):
    mask = dense_mask_from_seq_ids(seq_ids, causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _assert_equal_with_grads(got_fn, want_fn, inputs, atol=1e-5):
    """Values, and gradients of a random projection of them (a sum of squares of a LayerNorm output cancels).

    A parameter's gradient sums over every position in an order that differs between the two paths, so fp32 rounding
    reaches ~4e-5 of its size on some CPUs (a CI machine of 2026-12-01); the gradients are compared at rtol 1e-4, far
    below the O(1) error a mask that lets one document see another gives.
    """
    got = got_fn()
    cotangent = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    got_grads = torch.autograd.grad((got * cotangent).sum(), inputs)
    want = want_fn()
    want_grads = torch.autograd.grad((want * cotangent).sum(), inputs)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=atol, rtol=1e-4)


LAYOUTS = {
    "uneven": [[5, 6, 9], [7, 7, 3, 3]],  # several buckets, the second row's last document ends the row
    "equal": [[4, 4, 4, 4], [4, 4, 4, 4]],  # images of one grid: a reshape, no gather, no mask
    "single_tokens": [[1, 1, 10, 8], [20]],  # one-token documents and a whole-row one
    "one_bucket_ragged": [[12, 13, 3], [13, 13, 2]],  # 12 and 13 share a bucket: padded, masked when bidirectional
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_segmented_equals_dense_mask_with_gradients(layout, causal):
    torch.manual_seed(0)
    seq_ids = _ids(LAYOUTS[layout])
    batch, seq_len = seq_ids.shape
    q = torch.randn(batch, 4, seq_len, 8, requires_grad=True)
    k = torch.randn(batch, 2, seq_len, 8, requires_grad=True)  # grouped-query keys and values
    v = torch.randn(batch, 2, seq_len, 8, requires_grad=True)
    plan = plan_segments(seq_ids, causal)
    assert plan is not None
    _assert_equal_with_grads(
        lambda: segmented_attention(q, k, v, plan), lambda: _dense(q, k, v, seq_ids, causal), (q, k, v)
    )


def test_plan_shapes_and_masks():
    equal = plan_segments(_ids(LAYOUTS["equal"]), causal=False)
    assert equal.buckets == () and equal.doc_len == 4  # no bucket: the packed row is reshaped
    ragged = _ids(LAYOUTS["one_bucket_ragged"])
    causal = plan_segments(ragged, causal=True)
    assert [(b.length, b.index.numel() // b.length) for b in causal.buckets] == [(2, 1), (3, 1), (13, 4)]
    assert all(b.key_mask is None for b in causal.buckets)  # causal: padding comes after every real key
    bidirectional = plan_segments(ragged, causal=False)
    assert bidirectional.buckets[2].key_mask[:, 0, 0].tolist() == [[True] * 12 + [False]] + [[True] * 13] * 3
    assert bidirectional.buckets[0].key_mask is None  # a bucket of one document pads nothing


def test_buckets_pad_by_less_than_a_fifth():
    spans: dict[int, list[int]] = {}
    for length in range(1, 70_000):
        spans.setdefault(bucket_of(length), []).append(length)
    assert all(max(lengths) < 1.19 * min(lengths) + 1 for lengths in spans.values())


def test_dense_mask_kept_when_buckets_would_cost_more_or_when_forced():
    assert plan_segments(_ids([[30], [29, 1]]), causal=True) is None  # 30^2 + 30^2 (29 pads to 30) + 1 > 2 x 30^2
    seq_ids = torch.tensor([[0] * 28 + list(range(1, 5))])  # one long document beside four of one token
    assert plan_segments(seq_ids, causal=True) is not None  # 28^2 + 4 x 1 < 32^2: buckets skip the padding
    with dense_mask_attention():
        assert plan_segments(torch.tensor([[0] * 16 + [1] * 16]), causal=True) is None
    assert plan_segments(torch.tensor([[0] * 16 + [1] * 16]), causal=True) is not None  # the switch is restored


def test_plan_is_reused_for_the_same_ids_tensor_only():
    seq_ids = torch.tensor([[0] * 4 + [1] * 4])
    first = plan_segments(seq_ids, causal=False)
    assert plan_segments(seq_ids, causal=False) is first  # every layer of a forward shares one plan
    assert plan_segments(seq_ids, causal=True) is not first
    other = torch.tensor([[0] * 3 + [1] * 5])
    assert plan_segments(other, causal=True).index.numel() == 8


def test_long_context_row_equals_dense_mask():
    # one 3,000-token document beside short ones in a 4,096-token row, as a long-context sub-stage packs
    torch.manual_seed(0)
    seq_ids = _ids([[3000, 600, 300, 100, 60, 30, 6]])
    q, k, v = (torch.randn(1, 2, 4096, 16, requires_grad=True) for _ in range(3))
    _assert_equal_with_grads(
        lambda: attention(q, k, v, causal=True, seq_ids=seq_ids, backend="sdpa"),
        lambda: _dense(q, k, v, seq_ids, causal=True),
        (q, k, v),
        atol=2e-5,
    )


def _model_equals_dense_path(model, inputs: dict, atol: float = 1e-5) -> None:
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        return model(**inputs)

    def run_dense():
        with dense_mask_attention():
            return model(**inputs)

    _assert_equal_with_grads(run, run_dense, params, atol=atol)


@pytest.mark.parametrize("grids", [[(4, 4)] * 6, [(4, 4), (3, 5), (2, 2), (4, 4), (5, 3)]])
def test_vit_packed_images_equal_dense_path(grids):
    torch.manual_seed(0)
    vit = build_backbone("vit", "tiny", n_layers=2, d_model=64, n_heads=4, mlp_hidden=128, patch_size=4)
    patches = [torch.randn(h * w, 3 * 16) for h, w in grids]
    packed = pack_patches(patches, grids)
    inputs = {"patches": packed["patches"], "grid_hw": packed["grid_hw"], "seq_ids": packed["seq_ids"]}
    _model_equals_dense_path(vit, inputs)


def test_llm_packed_text_and_mixed_rows_equal_dense_path():
    # row 0: documents of geometric lengths; row 1: a mixed row (text, an image's tokens, text) as one id each
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=97)
    seq_ids = _ids([[40, 3, 70, 1, 9, 5], [30, 64, 34]])
    inputs = {"input_ids": torch.randint(0, 97, seq_ids.shape), "seq_ids": seq_ids}
    _model_equals_dense_path(llm, inputs, atol=2e-5)
