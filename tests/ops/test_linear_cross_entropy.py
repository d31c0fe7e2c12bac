"""The chunked output-layer loss equals the plain one (loss and gradients) and never holds more than one chunk of
logits; the LLM, the VLM and the text stage reach it through ``head_loss`` and ``loss_chunk_size``."""

import weakref
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mm_lightning import build_backbone
from mm_lightning.errors import ConfigError
from mm_lightning.losses.next_token import IGNORE_INDEX, NextTokenLoss
from mm_lightning.models.vlm import VLM
from mm_lightning.ops.linear_cross_entropy import linear_cross_entropy
from mm_lightning.ops.patches import image_to_patches, pack_patches
from mm_lightning.stages import TextPretrainStage

LLM = {"vocab_size": 97, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 96}
VIT = {"patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_patches": 64, "pos_grid": 8}


def masked_labels(shape: tuple[int, int], vocab: int, seed: int = 0) -> torch.Tensor:
    """Random targets with a third of the positions (a prefix of each row and scattered ones) ignored."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < 0.25] = IGNORE_INDEX
    labels[:, :3] = IGNORE_INDEX
    return labels


def assert_relative(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> None:
    """``got`` equals ``expected`` to ``rel`` of its norm (element-wise ratios blow up where gradients cancel)."""
    assert got.shape == expected.shape
    error = float((got.detach().double() - expected.detach().double()).norm() / expected.detach().double().norm())
    assert error <= rel, f"relative error {error:.2e} > {rel:.0e}"


def plain_and_chunked(hidden, weight, labels, chunk_size):
    """(loss, d hidden, d weight) of ``F.cross_entropy`` over the whole logits and of the chunked loss."""
    results = []
    for loss_fn in (
        lambda h, w: F.cross_entropy((h @ w.T).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX),
        lambda h, w: linear_cross_entropy(h, w, labels, chunk_size, IGNORE_INDEX),
    ):
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        loss = loss_fn(h, w)
        (2.5 * loss).backward()  # an upstream gradient other than 1
        results.append((loss.detach(), h.grad, w.grad))
    return results


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1000])
def test_chunked_equals_plain_fp32(chunk_size):
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 37, 24), torch.randn(101, 24)
    labels = masked_labels((3, 37), 101)  # 111 positions: not a multiple of 7 or 16
    (loss, d_hidden, d_weight), (chunked, c_hidden, c_weight) = plain_and_chunked(hidden, weight, labels, chunk_size)
    assert_relative(chunked, loss)
    assert_relative(c_hidden, d_hidden)
    assert_relative(c_weight, d_weight)
    assert (c_hidden[labels == IGNORE_INDEX] == 0).all()


def test_no_counted_token_gives_nan_like_cross_entropy():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(11, 8)
    labels = torch.full((2, 5), IGNORE_INDEX)
    plain = F.cross_entropy((hidden @ weight.T).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert plain.isnan() and linear_cross_entropy(hidden, weight, labels, 4, IGNORE_INDEX).isnan()


def test_bf16_autocast_matches_the_plain_head_and_accumulates_in_fp32():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 50, 32), torch.randn(300, 32) * 0.2
    labels = masked_labels((2, 50), 300)
    results = []
    for chunk_size in (0, 16):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = NextTokenLoss(chunk_size).from_hidden(h, w, labels)["loss"]
        loss.backward()
        assert loss.dtype == torch.float32 and w.grad.dtype == torch.float32
        results.append((loss.detach(), h.grad, w.grad))
    (loss, d_hidden, d_weight), (chunked, c_hidden, c_weight) = results
    torch.testing.assert_close(chunked, loss, rtol=1e-5, atol=0)  # same bf16 logits, fp32 softmax in both
    torch.testing.assert_close(c_hidden, d_hidden, rtol=2e-2, atol=1e-4)  # bf16 matmuls, rounded per chunk
    torch.testing.assert_close(c_weight, d_weight, rtol=2e-2, atol=1e-4)


class LargeTensors(TorchDispatchMode):
    """Follows every tensor of at least ``numel`` elements that an operation returns: the largest, and the most
    distinct ones alive at once (weak references, so a tensor counts while anything, autograd included, holds it)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.largest, self.most_alive = numel, 0, 0
        self.alive: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        large = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.numel() >= self.numel]
        self.largest = max([self.largest, *(t.numel() for t in large)])
        self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(t) for t in large]
        storages = {ref().untyped_storage().data_ptr() for ref in self.alive if ref() is not None}
        self.most_alive = max(self.most_alive, len(storages))
        return out


def test_one_chunk_of_logits_at_a_time_in_forward_and_backward():
    hidden = torch.randn(1, 300, 16, requires_grad=True)
    weight = torch.randn(500, 16, requires_grad=True)
    labels = torch.randint(0, 500, (1, 300))
    with LargeTensors(32 * 500) as chunked:
        linear_cross_entropy(hidden, weight, labels, 32, IGNORE_INDEX).backward()
    assert (chunked.largest, chunked.most_alive) == (32 * 500, 1)  # one chunk's logits; the whole are 300 x 500
    with LargeTensors(32 * 500) as plain:
        NextTokenLoss(0).from_hidden(hidden, weight, labels)["loss"].backward()
    assert plain.largest == 300 * 500 and plain.most_alive >= 2  # the plain path, for contrast


def test_no_grad_computes_no_gradients():
    hidden, weight = torch.randn(1, 40, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    labels = torch.randint(0, 30, (1, 40))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels, 16, IGNORE_INDEX)
    assert not loss.requires_grad
    expected = F.cross_entropy((hidden @ weight.T).flatten(0, 1), labels.flatten())
    assert_relative(loss, expected.detach())


@pytest.mark.parametrize("tied", [True, False])
def test_llm_head_loss_equals_the_loss_of_its_logits(tied):
    torch.manual_seed(0)
    llm = build_backbone("llm", "tiny", **LLM, tie_embeddings=tied)
    input_ids, labels = torch.randint(0, 97, (2, 29)), masked_labels((2, 29), 97)
    loss = NextTokenLoss(chunk_size=8)
    plain = loss(llm(input_ids), labels)["loss"]
    plain_grads = torch.autograd.grad(plain, list(llm.parameters()))
    chunked = llm(input_ids, head_loss=partial(loss.from_hidden, labels=labels))
    assert set(chunked) == {"next_token", "loss"}
    chunked_grads = torch.autograd.grad(chunked["loss"], list(llm.parameters()))
    assert_relative(chunked["loss"], plain)
    for got, expected in zip(chunked_grads, plain_grads, strict=True):
        assert_relative(got, expected)


def test_vlm_head_loss_reaches_the_vision_tower_like_the_plain_loss():
    torch.manual_seed(0)
    vit = build_backbone("vit", "tiny", **VIT)
    projector = build_backbone("projector", "tiny", vision_dim=32, llm_dim=64)
    vlm = VLM(build_backbone("llm", "tiny", **LLM), vit, projector, image_token_id=2)
    patches, grid = image_to_patches(torch.randn(3, 24, 24), 8, 64)
    images = pack_patches([patches], [grid])
    ids = torch.tensor([[2] * vlm.projector.num_tokens(*grid) + list(range(5, 20))])
    labels = torch.cat([torch.full((1, 4), IGNORE_INDEX), ids[:, 5:], torch.tensor([[IGNORE_INDEX]])], dim=1)
    loss = NextTokenLoss(chunk_size=4)
    args = (ids, images["patches"], images["grid_hw"], images["seq_ids"])
    plain = loss(vlm(*args), labels)["loss"]
    plain_grads = torch.autograd.grad(plain, list(vit.parameters()))
    chunked = vlm(*args, head_loss=partial(loss.from_hidden, labels=labels))["loss"]
    chunked_grads = torch.autograd.grad(chunked, list(vit.parameters()))
    assert_relative(chunked, plain)
    for got, expected in zip(chunked_grads, plain_grads, strict=True):
        assert_relative(got, expected)


def test_text_stage_switch_chunked_equals_plain():
    batch = {"input_ids": torch.randint(0, 97, (2, 21)), "labels": masked_labels((2, 21), 97)}
    batch["position_ids"] = torch.arange(21).expand(2, -1)
    batch["seq_ids"] = torch.zeros(2, 21, dtype=torch.long)
    losses = []
    for chunk_size in (None, 0, 5):
        torch.manual_seed(0)
        stage = TextPretrainStage(llm="tiny", llm_overrides=LLM, loss_chunk_size=chunk_size)
        losses.append(stage.next_token_loss(batch)["loss"])
    assert losses[0] == losses[1]
    assert_relative(losses[2], losses[0])


def test_negative_chunk_size_is_refused():
    with pytest.raises(ConfigError, match="loss_chunk_size"):
        NextTokenLoss(-1)
