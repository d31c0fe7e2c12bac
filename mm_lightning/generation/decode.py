"""Autoregressive text generation for the LLM (and anything with its forward signature); no Lightning.

:func:`generate` decodes greedily or by sampling (temperature, top-k, nucleus/top-p as in Holtzman et al.
2020) with a KV cache (:class:`~mm_lightning.models.llm.KVCache`) or, as the reference, by re-running the
whole sequence every step. The prompt may be token ids or embeddings, so the VLM can pass text embeddings
with image features spliced in; the new tokens are then embedded with ``model.embed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.errors import ConfigError

READ_ONLY_IDS = (tokenizer_lib.PAD_ID, tokenizer_lib.IMAGE_ID, tokenizer_lib.IMAGE_START_ID, tokenizer_lib.IMAGE_END_ID)
"""Tokens a model reads but never writes: padding, and the image placeholders (generated text has no image features to
splice in). A long-context model trained on videos, whose frames follow each other, learns that ``<|image_end|>`` is
most often followed by ``<|image_start|>``; decoding greedily, it opened frame after frame, and the decoded captions,
image tokens stripped, came out empty (the demo's stage 5, 100 of 100 scenes, before this rule)."""


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Refuse sampling options that keep no token or flip the distribution, with a ``ConfigError`` that says why.

    Args:
        temperature: finite and ``>= 0`` (``0`` is greedy).
        top_k: ``None`` or at least 1.
        top_p: ``None`` or in ``(0, 1]``.
    """
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be a finite number >= 0 (0 decodes greedily), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1 (it keeps the k most likely tokens), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (it keeps that much probability mass), got {top_p}")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set all but the ``k`` largest logits of each row to ``-inf``. ``[B, V] -> [B, V]``."""
    check_sampling(top_k=k)
    kth_largest = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Args:
        logits: ``[B, V]`` logits.
        p: probability mass in ``(0, 1]``.

    Returns:
        ``[B, V]`` logits with the tokens outside the nucleus set to ``-inf``; the top token always stays.
    """
    check_sampling(top_p=p)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [B, V] mass of the more likely tokens
    drop_sorted = mass_before >= p  # the set already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row from next-token logits.

    Args:
        logits: ``[B, V]`` logits.
        temperature: divides the logits before sampling; ``0`` means greedy.
        top_k: keep only the ``k`` most likely tokens.
        top_p: keep only the nucleus of probability mass ``p`` (after top-k).
        greedy: take the argmax, ignoring the sampling options.
        generator: random generator for reproducible sampling.

    Returns:
        ``[B]`` int64 token ids.

    Raises:
        ConfigError: an invalid option (:func:`check_sampling`), also when decoding greedily.
    """
    check_sampling(temperature, top_k, top_p)
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor | None = None,
    max_new_tokens: int = 32,
    *,
    inputs_embeds: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    suppress_ids: Sequence[int] = READ_ONLY_IDS,
) -> Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    Prompts in a batch share one length (no padding mask). A row stops at its first ``eos_id`` and is
    padded with ``eos_id`` after it; decoding ends early once every row has stopped.

    Args:
        model: the LLM, or any module with its ``forward(input_ids=, inputs_embeds=, kv_cache=)`` and
            ``new_kv_cache`` (for ``use_cache``) and ``embed`` (for ``inputs_embeds``).
        input_ids: ``[B, T]`` prompt token ids (or pass ``inputs_embeds``).
        max_new_tokens: most tokens to add.
        inputs_embeds: ``[B, T, d_model]`` prompt embeddings, e.g. text with image features spliced in.
        temperature: sampling temperature (see :func:`sample_next_token`).
        top_k: top-k filter for sampling.
        top_p: nucleus filter for sampling.
        greedy: argmax decoding.
        eos_id: end-of-sequence token that stops a row.
        use_cache: decode with a KV cache; False re-runs the full sequence every step (the reference).
        generator: random generator for sampling.
        suppress_ids: tokens never generated (their logits are set to ``-inf``); by default :data:`READ_ONLY_IDS`.

    Returns:
        ``[B, T_new]`` new token ids, ``T_new <= max_new_tokens``.

    Raises:
        ConfigError: an invalid sampling option (:func:`check_sampling`), before any forward pass.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
    check_sampling(temperature, top_k, top_p)
    prompt = input_ids if input_ids is not None else inputs_embeds
    batch, prompt_len = prompt.shape[:2]
    if max_new_tokens <= 0:
        return torch.zeros(batch, 0, dtype=torch.long, device=prompt.device)
    as_embeds = inputs_embeds is not None
    step = _CachedStep(model, batch, prompt_len + max_new_tokens) if use_cache else _FullStep(model)
    logits = step(prompt, as_embeds)  # [B, V]
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    tokens: list[Tensor] = []  # T_new x [B]
    suppress = torch.tensor(list(suppress_ids), dtype=torch.long, device=prompt.device)
    for i in range(max_new_tokens):
        logits = logits.index_fill(-1, suppress, float("-inf")) if len(suppress) else logits
        token = sample_next_token(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator
        )  # [B]
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        tokens.append(token)
        if i == max_new_tokens - 1 or bool(finished.all()):
            break
        new = token[:, None]  # [B, 1]
        logits = step(model.embed(new) if as_embeds else new, as_embeds)
    return torch.stack(tokens, dim=1)  # [B, T_new]


@torch.no_grad()
def greedy_each(model: nn.Module, prompts: Sequence[Tensor], max_new_tokens: int, eos_id: int | None,
                batch_size: int = 32) -> list[list[int]]:  # fmt: skip
    """Greedy continuations of prompt embeddings ``[1, T_i, d]``, in order.

    Prompts of equal length decode together, up to ``batch_size`` at a time (no padding, so each continuation is the
    one it would be alone); a row stops at ``eos_id`` (``None``: every batch takes ``max_new_tokens`` steps).
    """
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(prompt.shape[1], []).append(index)
    outputs: list[list[int]] = [[] for _ in prompts]
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            new = generate(model, inputs_embeds=torch.cat([prompts[i] for i in chunk]), greedy=True,
                           max_new_tokens=max_new_tokens, eos_id=eos_id)  # fmt: skip
            for index, row in zip(chunk, new.tolist(), strict=True):
                outputs[index] = row
    return outputs


class _CachedStep:
    """Feeds only the new tokens; the KV cache holds the rest."""

    def __init__(self, model: nn.Module, batch: int, max_len: int) -> None:
        self.model = model
        self.cache = model.new_kv_cache(batch, max_len)

    def __call__(self, new: Tensor, as_embeds: bool) -> Tensor:
        key = "inputs_embeds" if as_embeds else "input_ids"
        return self.model(**{key: new}, kv_cache=self.cache)[:, -1]  # [B, V]


class _FullStep:
    """Appends the new tokens and re-runs the whole sequence (no cache)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sequence: Tensor | None = None

    def __call__(self, new: Tensor, as_embeds: bool) -> Tensor:
        self.sequence = new if self.sequence is None else torch.cat((self.sequence, new), dim=1)
        key = "inputs_embeds" if as_embeds else "input_ids"
        return self.model(**{key: self.sequence})[:, -1]  # [B, V]
