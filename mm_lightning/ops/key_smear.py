"""Smeared keys (Olsson et al. 2022, "In-context Learning and Induction Heads", section on the smeared-key model).

Each key mixes in the key of the position before it through a learned gate per key head::

    k'_t = (1 - g) * k_t + g * k_{t-1},   g = sigmoid(gate_logit),   k_{-1} = 0 (and at every document start)

so a query can find a position by the token *before* it: "which earlier token followed one like me" takes one head
instead of a previous-token head feeding an induction head in a later layer. Olsson et al. introduced it to make
induction heads form in a one-layer model; on this project's tiny preset, trained with Muon, it is what lets
content-matched copying (the passkey's capability) form in a few hundred steps (README, "What makes content-matched
copying form"). The keys it mixes are the rotated ones, so position ``t``'s key keeps ``t - 1``'s rotation in its
share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mm_lightning.ops.packing import document_starts

GATE_INIT = 3.0
"""Initial gate logit: each key starts as ``sigmoid(3) = 0.95`` its predecessor's, nearly the key of the token before
(``LLMConfig.key_smear_init`` sets another). The more of the predecessor a key starts with, the sooner a copying head
forms: after 400 steps of copy rows a gate starting at the even mix (logit 0) had whole-vocabulary spans at 8.49 nats
and this start at 1.61, and on text after them it passed 12 of 30 passkey prompts where the even mix passed none; a
start at ``sigmoid(-2) = 0.12`` was slower still (README, "A copy warm-up, then restated rows")."""


def smear_keys(k: Tensor, gate_logit: Tensor, seq_ids: Tensor | None = None) -> Tensor:
    """Keys ``[B, Hkv, T, D]`` with each one's predecessor mixed in by ``sigmoid(gate_logit)`` (``[Hkv]``).

    A row's first position, and with ``seq_ids`` (``[B, T]``) every packed document's first, has no predecessor:
    nothing is mixed in there, so documents stay apart.
    """
    previous = F.pad(k[:, :, :-1], (0, 0, 1, 0))  # [B, Hkv, T, D], zeros at position 0
    if seq_ids is not None:
        continues = ~document_starts(seq_ids)  # [B, T]
        previous = previous * continues[:, None, :, None].to(k.dtype)
    gate = torch.sigmoid(gate_logit).to(k.dtype)[None, :, None, None]  # [1, Hkv, 1, 1]
    return k + gate * (previous - k)
