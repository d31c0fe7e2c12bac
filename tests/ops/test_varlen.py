"""Packed attention document by document (ops/varlen.py) equals the dense block-diagonal mask, values and grads."""

import pytest
import torch
import torch.nn.functional as F

from mm_lightning.ops.packing import dense_mask_from_seq_ids
from mm_lightning.ops.varlen import plan_segments, segmented_attention


def _dense(q, k, v, seq_ids, causal):
    mask = dense_mask_from_seq_ids(seq_ids, causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("causal", [True, False])
def test_segmented_equals_dense_mask_with_gradients(causal):
    torch.manual_seed(0)
    # two rows, documents of uneven lengths, the second row's last document runs to the row's end
    seq_ids = torch.tensor([[0] * 5 + [1] * 6 + [2] * 9, [0] * 7 + [1] * 7 + [2] * 3 + [3] * 3])
    q = torch.randn(2, 4, 20, 8, requires_grad=True)
    k = torch.randn(2, 2, 20, 8, requires_grad=True)  # grouped-query keys and values
    v = torch.randn(2, 2, 20, 8, requires_grad=True)
    plan = plan_segments(seq_ids, causal)
    assert plan is not None and plan.index.shape == (7, 9)  # seven documents, the longest of 9
    out = segmented_attention(q, k, v, plan)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = _dense(q, k, v, seq_ids, causal)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dense_mask_kept_when_padding_would_cost_more():
    seq_ids = torch.tensor([[0] * 28 + list(range(1, 5))])  # one long document beside four of one token
    assert plan_segments(seq_ids, causal=True) is None  # 5 x 28^2 padded entries > 32^2 dense ones
    assert plan_segments(torch.tensor([[0] * 16 + [1] * 16]), causal=True) is not None  # 2 x 16^2 < 32^2


def test_plan_is_reused_for_the_same_ids_tensor_only():
    seq_ids = torch.tensor([[0] * 4 + [1] * 4])
    first = plan_segments(seq_ids, causal=False)
    assert plan_segments(seq_ids, causal=False) is first  # every layer of a forward shares one plan
    assert plan_segments(seq_ids, causal=True) is not first
    other = torch.tensor([[0] * 3 + [1] * 5])
    assert plan_segments(other, causal=True).index.shape == (2, 5)
