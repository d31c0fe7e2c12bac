"""Smeared keys (Olsson et al. 2022, "In-context Learning and Induction Heads", section on the smeared-key model).

Each key mixes in the key of the position before it through a learned gate per key head::

    k'_t = (1 - g) * k_t + g * k_{t-1},   g = sigmoid(gate_logit),   k_{-1} = 0 (and at every document start)

so a query can find a position by the token *before* it: "which earlier token followed one like me" takes one head
instead of a previous-token head feeding an induction head in a later layer. Olsson et al. introduced it to make
induction heads form in a one-layer model; on this project's tiny preset, trained with Muon, it is what lets
content-matched copying (the passkey's capability) form in a few hundred steps (README, "What makes content-matched
copying form"). The keys it mixes are the rotated ones, so position ``t``'s key keeps ``t - 1``'s rotation in its
share.

One token is a weak cue: the passkey's question ends in `` lock`` ``er``, which the prompt holds after its intro too
("A locker number"), and a head matching ``er`` alone splits its attention between them. With ``L`` lags
(``LLMConfig.smear_lags``) the smeared share mixes the ``L`` keys before the position (``k[t-1] + w2 * k[t-2] + ...``)
and each query its ``L - 1`` predecessors (``q[t] + w1 * q[t-1] + ...``), learned weights per head; aligned lags meet
at the same relative offset, so one head can match "in locker" and not only "er" (README, "Why the passkey stays at
0", (17)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GATE_INIT = 3.0
"""Initial gate logit: each key starts as ``sigmoid(3) = 0.95`` its predecessor's, nearly the key of the token before
(``LLMConfig.key_smear_init`` sets another). The more of the predecessor a key starts with, the sooner a copying head
forms: after 400 steps of copy rows a gate starting at the even mix (logit 0) had whole-vocabulary spans at 8.49 nats
and this start at 1.61, and on text after them it passed 12 of 30 passkey prompts where the even mix passed none; a
start at ``sigmoid(-2) = 0.12`` was slower still (README, "A copy warm-up, then restated rows")."""


def shifted(x: Tensor, lag: int, seq_ids: Tensor | None = None) -> Tensor:
    """``x`` (``[B, H, T, D]``) moved ``lag`` positions later: position ``t`` holds ``x[t - lag]``, zeros where
    ``t - lag`` is before the row or (with ``seq_ids``, ``[B, T]``) in another packed document."""
    if lag >= x.shape[2]:
        return torch.zeros_like(x)
    out = F.pad(x[:, :, : x.shape[2] - lag], (0, 0, lag, 0))
    if seq_ids is not None:
        same = torch.zeros_like(seq_ids, dtype=torch.bool)  # [B, T]: t - lag lies in t's document
        same[:, lag:] = seq_ids[:, lag:] == seq_ids[:, :-lag]
        out = out * same[:, None, :, None].to(x.dtype)
    return out


def lag_mix(x: Tensor, weights: Tensor, first_lag: int, seq_ids: Tensor | None = None) -> Tensor:
    """``sum_l w_l * x[t - first_lag - l]`` over ``l = 0 .. L``: ``w_0 = 1`` and ``weights`` (``[L * H]``, lag-major)
    the further lags' weights per head of ``x`` (``[B, H, T, D]``)."""
    heads = x.shape[1]
    out = shifted(x, first_lag, seq_ids) if first_lag else x
    for index, w in enumerate(weights.to(x.dtype).view(-1, heads)):
        out = out + w[None, :, None, None] * shifted(x, first_lag + 1 + index, seq_ids)
    return out


def smear_keys(
    k: Tensor, gate_logit: Tensor, seq_ids: Tensor | None = None, lag_weights: Tensor | None = None
) -> Tensor:
    """Keys ``[B, Hkv, T, D]`` with each one's predecessor mixed in by ``sigmoid(gate_logit)`` (``[Hkv]``).

    With ``lag_weights`` (``[(L - 1) * Hkv]``) the predecessor's key is itself a mix of the ``L`` keys before the
    position, ``k[t-1] + w * k[t-2] + ...``, so the key says which ``L`` tokens came before it (see
    :func:`smear_queries`). A row's first position, and with ``seq_ids`` (``[B, T]``) every packed document's first,
    has no predecessor: nothing is mixed in there, so documents stay apart.
    """
    previous = shifted(k, 1, seq_ids) if lag_weights is None else lag_mix(k, lag_weights, 1, seq_ids)
    gate = torch.sigmoid(gate_logit).to(k.dtype)[None, :, None, None]  # [1, Hkv, 1, 1]
    return k + gate * (previous - k)


def smear_queries(q: Tensor, lag_weights: Tensor, seq_ids: Tensor | None = None) -> Tensor:
    """Queries ``[B, H, T, D]`` with their ``L - 1`` predecessors mixed in, ``q[t] + w * q[t-1] + ...``
    (``lag_weights``: ``[(L - 1) * H]``): a query that says the last ``L`` tokens, to meet keys that say the ``L``
    tokens before them (:func:`smear_keys`), so that a copying head matches a phrase, not its last token."""
    return lag_mix(q, lag_weights, 0, seq_ids)
