"""Parallelism applied from outside the model: activation checkpointing changes memory, not results."""

import torch

from mm_lightning import build_backbone
from mm_lightning.parallel import parallelize

MICRO = {"vocab_size": 97, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 96}


def loss_and_grads(llm, ids):
    loss = torch.nn.functional.cross_entropy(llm(ids).flatten(0, 1), ids.roll(-1, dims=1).flatten())
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in llm.named_parameters()}


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone("llm", "tiny", **MICRO)
    wrapped = build_backbone("llm", "tiny", **MICRO)
    wrapped.load_state_dict(plain.state_dict())
    parallelize(wrapped, wrapped.blocks, mesh=None, activation_checkpointing=True)
    assert all("CheckpointWrapper" in type(block).__name__ for block in wrapped.blocks)
    assert wrapped.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    ids = torch.randint(0, 97, (2, 12))
    loss_a, grads_a = loss_and_grads(plain, ids)
    loss_b, grads_b = loss_and_grads(wrapped, ids)
    assert loss_a == loss_b
    grads_b = {name.replace("._checkpoint_wrapped_module", ""): g for name, g in grads_b.items()}
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
