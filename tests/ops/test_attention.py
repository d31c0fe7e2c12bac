"""Attention backends: packed masks, GQA, backend selection (xformers only where CUDA is)."""

import sys
import types

import pytest
import torch

from mm_lightning.ops.attention import (
    attention,
    resolve_backend,
    xformers_available,
    xformers_inputs,
    xformers_probe_error,
)
from mm_lightning.ops.packing import (
    dense_mask_from_seq_ids,
    position_ids_from_seq_ids,
    seq_ids_from_eod,
    seqlens_from_seq_ids,
)

requires_cuda_xformers = pytest.mark.skipif(
    not xformers_available(), reason="xformers has no CPU kernels; needs CUDA and a build whose kernels run"
)


def reference_attention(q, k, v, causal):
    """Plain softmax attention with explicit GQA expansion, for one sequence ``[H, T, D]``."""
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    v = v.repeat_interleave(q.shape[0] // v.shape[0], dim=0)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_packed_equals_each_sequence_alone(causal):
    torch.manual_seed(0)
    lengths = [3, 7, 4, 2]
    seq_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]  # [1, 16]
    q, k, v = torch.randn(1, 4, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    out = attention(q, k, v, causal=causal, seq_ids=seq_ids, backend="sdpa")[0]
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        expected = reference_attention(q[0, :, sl], k[0, :, sl], v[0, :, sl], causal)
        torch.testing.assert_close(out[:, sl], expected, atol=1e-5, rtol=1e-5)
        start += n


def test_packing_helpers():
    tokens = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 1], [1, 0, 2, 3, 4, 5, 6, 7]])
    seq_ids = seq_ids_from_eod(tokens, eod_id=0)
    assert seq_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert position_ids_from_seq_ids(seq_ids).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert seqlens_from_seq_ids(seq_ids) == [3, 4, 1, 2, 6]
    mask = dense_mask_from_seq_ids(seq_ids, causal=True)[1, 0]
    assert mask[3, 2] and not mask[2, 1] and not mask[2, 3]


def test_backend_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "sdpa"
    assert resolve_backend("sdpa", cpu) == "sdpa"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_backend("xformers", cpu)
    with pytest.raises(ValueError, match="choose one of auto, sdpa, xformers"):
        resolve_backend("flash", cpu)


def test_cpu_path_never_imports_xformers():
    import subprocess
    import sys

    code = (
        "import sys, torch, mm_lightning; from mm_lightning.ops.attention import attention;"
        "q = torch.randn(1, 2, 4, 8); attention(q, q, q, causal=True, backend='auto');"
        "assert 'xformers' not in sys.modules, 'xformers was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})


def test_xformers_inputs_share_the_autocast_dtype():
    # under bf16 autocast the projections are bf16 but RoPE (float32) promotes q and k; xformers needs one dtype
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    v = torch.randn(2, 2, 3, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_, k_, v_ = xformers_inputs(q, k, v)
    assert {t.dtype for t in (q_, k_, v_)} == {torch.bfloat16}
    assert q_.shape == k_.shape == v_.shape == (1, 6, 4, 8)
    torch.testing.assert_close(k_[0, 3:, 1], k[1, 0].to(torch.bfloat16))  # batch 1, head 1 reads kv head 0
    torch.testing.assert_close(k_[0, 3:, 2], k[1, 1].to(torch.bfloat16))
    assert xformers_inputs(q, k, v.float())[0].dtype == torch.float32  # no autocast: the inputs' own dtype


def _fake_xformers(monkeypatch, attention_fn) -> None:
    fmha = types.SimpleNamespace(
        memory_efficient_attention=attention_fn,
        attn_bias=types.SimpleNamespace(BlockDiagonalCausalMask=types.SimpleNamespace(from_seqlens=lambda s: s)),
    )
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", types.SimpleNamespace(fmha=fmha))


def test_xformers_probe_refuses_a_build_without_kernels(monkeypatch):
    # a wheel built for another torch imports but raises at the first call: it must not be picked
    def no_kernels(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`\nmore")

    _fake_xformers(monkeypatch, no_kernels)
    assert (
        xformers_probe_error("cpu") == "NotImplementedError: No operator found for `memory_efficient_attention_forward`"
    )
    _fake_xformers(monkeypatch, lambda q, k, v, attn_bias: q)
    assert xformers_probe_error("cpu") is None


@requires_cuda_xformers
def test_xformers_under_bf16_autocast_on_cuda():
    q, k = torch.randn(1, 8, 16, 64, device="cuda"), torch.randn(1, 2, 16, 64, device="cuda")
    v = torch.randn(1, 2, 16, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_x = attention(q, k, v.bfloat16(), causal=True, backend="xformers")
        out_s = attention(q, k, v.bfloat16(), causal=True, backend="sdpa")
    torch.testing.assert_close(out_x.float(), out_s.float(), atol=2e-2, rtol=2e-2)


@requires_cuda_xformers
@pytest.mark.parametrize("causal", [True, False])
def test_xformers_matches_sdpa_on_cuda(causal):
    torch.manual_seed(0)
    seq_ids = torch.tensor([[0] * 5 + [1] * 11, [0] * 16]).cuda()
    q = torch.randn(2, 8, 16, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    out_x = attention(q, k, v, causal=causal, seq_ids=seq_ids, backend="xformers")
    out_s = attention(q, k, v, causal=causal, seq_ids=seq_ids, backend="sdpa")
    torch.testing.assert_close(out_x.float(), out_s.float(), atol=2e-2, rtol=2e-2)
