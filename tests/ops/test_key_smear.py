"""ops/key_smear.py: each key mixes in its predecessor by the gate, never across a row's or a document's start."""

import torch

from mm_lightning.ops.key_smear import smear_keys


def test_each_key_mixes_in_the_one_before_it_by_its_heads_gate() -> None:
    k = torch.randn(2, 3, 5, 4)  # [B, Hkv, T, D]
    logit = torch.tensor([-2.0, 0.0, 3.0])
    out = smear_keys(k, logit)
    gate = torch.sigmoid(logit)
    for head in range(3):
        g = gate[head]
        torch.testing.assert_close(out[:, head, 0], (1 - g) * k[:, head, 0])  # nothing before position 0
        torch.testing.assert_close(out[:, head, 1:], (1 - g) * k[:, head, 1:] + g * k[:, head, :-1])


def test_a_document_start_mixes_in_nothing_from_the_document_before() -> None:
    k = torch.randn(1, 2, 6, 4)
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, 2]])
    out = smear_keys(k, torch.zeros(2), seq_ids)
    torch.testing.assert_close(out[:, :, [0, 3, 5]], 0.5 * k[:, :, [0, 3, 5]])  # each document's first key
    torch.testing.assert_close(out[:, :, 4], 0.5 * (k[:, :, 4] + k[:, :, 3]))
    torch.testing.assert_close(out[:, :, 1:3], 0.5 * (k[:, :, 1:3] + k[:, :, 0:2]))
