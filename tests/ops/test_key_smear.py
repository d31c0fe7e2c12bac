"""ops/key_smear.py: each key mixes in its predecessor by the gate, never across a row's or a document's start."""

import torch

from mm_lightning.ops.key_smear import smear_keys, smear_queries


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


def test_further_lags_mix_the_keys_before_the_predecessor_and_the_queries_before_the_position() -> None:
    k, q = torch.randn(1, 2, 7, 4), torch.randn(1, 3, 7, 4)  # two key heads, three query heads
    k_weights = torch.tensor([0.5, -1.0, 0.25, 2.0])  # lag 2 then lag 3 of the keys, per key head
    q_weights = torch.tensor([0.3, 0.6, 0.9])  # lag 1 of the queries, per query head
    keys = smear_keys(k, torch.full((2,), 30.0), None, k_weights)  # gate ~1: the smeared share alone
    for t in range(3, 7):
        want = k[:, :, t - 1] + k_weights[:2, None] * k[:, :, t - 2] + k_weights[2:, None] * k[:, :, t - 3]
        torch.testing.assert_close(keys[:, :, t], want)
    torch.testing.assert_close(keys[:, :, 1], k[:, :, 0])  # nothing before the row
    queries = smear_queries(q, q_weights)
    torch.testing.assert_close(queries[:, :, 0], q[:, :, 0])
    torch.testing.assert_close(queries[:, :, 1:], q[:, :, 1:] + q_weights[:, None, None] * q[:, :, :-1])


def test_further_lags_stop_at_a_document_start() -> None:
    k = torch.randn(1, 1, 6, 4)
    seq_ids = torch.tensor([[0, 0, 1, 1, 1, 1]])
    keys = smear_keys(k, torch.tensor([30.0]), seq_ids, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(keys[:, :, 3], k[:, :, 2])  # document 1's second key: its first alone
    torch.testing.assert_close(keys[:, :, 4], k[:, :, 3] + k[:, :, 2])
    torch.testing.assert_close(keys[:, :, 5], k[:, :, 4] + k[:, :, 3] + k[:, :, 2])
    queries = smear_queries(k, torch.tensor([1.0]), seq_ids)
    torch.testing.assert_close(queries[:, :, 2], k[:, :, 2])  # a document's first query: itself alone
