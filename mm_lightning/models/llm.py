"""A Llama-style decoder-only language model (Touvron et al. 2023; Llama 3.2 shapes for the 1b preset).

RMSNorm, SwiGLU feed-forward, grouped-query attention and rotary positions whose base is run-time
state (``set_rope_base``), as Kimi-VL's long-context stage switches it 50,000 -> 800,000, as is an optional YaRN
scaling of its frequencies (``set_rope_yarn``). The forward
takes ``input_ids`` or ``inputs_embeds`` (the joint stages inject projected image features) and
packed-sequence ids, so documents packed into one row never attend to each other. For decoding, a
:class:`KVCache` keeps every layer's keys/values so each step runs only the new tokens (always on SDPA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.models.registry import register_backbone, register_preset
from mm_lightning.ops.attention import attention, prefix_causal_attention
from mm_lightning.ops.key_smear import GATE_INIT, smear_keys, smear_queries
from mm_lightning.ops.packing import position_ids_from_seq_ids
from mm_lightning.ops.rope import YaRN, apply_rope, rope_cos_sin

HeadLoss = Callable[[Tensor, Tensor], Any]
"""What ``LLM.forward`` may call in place of its output layer: a function of the final hidden states ``[B, T, d]``
and the head weight ``[V, d]``, e.g. a chunked next-token loss that never builds the logits whole."""


@dataclass
class LLMConfig:
    """Architecture of the language model."""

    vocab_size: int = 8192
    """Size of the token vocabulary (embedding rows and output logits)."""
    n_layers: int = 4
    """Number of transformer blocks."""
    d_model: int = 256
    """Width of the residual stream."""
    n_heads: int = 8
    """Number of query heads."""
    n_kv_heads: int = 4
    """Number of key/value heads (grouped-query attention); must divide ``n_heads``."""
    ffn_hidden: int = 688
    """Hidden width of the SwiGLU feed-forward."""
    rope_base: float = 50_000.0
    """RoPE base (theta) at build time; a callback may switch it later."""
    norm_eps: float = 1e-5
    """Epsilon of the RMSNorms."""
    tie_embeddings: bool = True
    """Share the input embedding with the output projection."""
    attn_backend: str = "auto"
    """Attention backend: ``auto`` (xformers on CUDA when available, else SDPA), ``sdpa`` or ``xformers``."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init."""
    key_smear: bool | list[bool] = False
    """Smeared keys (``ops/key_smear.py``): each key mixes in the previous position's through a learned gate per key
    head, so one head can copy what followed an earlier occurrence of a token (an induction head). Trained with Muon,
    it lets the tiny preset learn such copying in a few hundred steps (README); a Llama has no such gate, so
    ``export-llama`` refuses a model that has it. ``true`` for every layer, or a list of one per layer (e.g.
    ``[true, true, false, false]``: gates in the copying head's layers only, the later layers keying on each
    position's own content; measured in the long demo's pipeline it aligned worse, README, "The copy curriculum in
    the long demo's hour")."""
    key_smear_init: float = GATE_INIT
    """The smear gates' initial logit: ``sigmoid`` of it is each key's initial share of its predecessor's key."""
    smear_lags: int | list[int] = 1
    """How many tokens a smeared head matches: with ``L > 1`` each query mixes in its ``L - 1`` predecessors and each
    key's smeared share the ``L`` keys before it (``ops/key_smear.py``), so that a copying head can find a phrase
    ("in locker") where one token ("er") occurs in several places. One number for every layer, or a list of one per
    layer (e.g. ``[3, 3, 1, 1]``: the phrase match in the first layers, whose extra lags would blur the later layers'
    far look-up; README, "Why the passkey stays at 0"). Needs ``key_smear``."""
    smear_lag_init: float = 0.5
    """Initial weight of every further lag (``smear_lags > 1``); lag 1 of the keys and lag 0 of the queries weigh 1."""
    head_dim: int = field(init=False)
    """Per-head width, derived: ``d_model // n_heads``."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        self.head_dim = self.d_model // self.n_heads
        lags = self._per_layer(self.smear_lags)
        if len(lags) != self.n_layers or any(not isinstance(n, int) or n < 1 for n in lags):
            raise ConfigError(
                f"smear_lags={self.smear_lags}: must be a whole number >= 1, or a list of {self.n_layers} of them "
                "(one per layer)"
            )
        smears = self._per_layer(self.key_smear)
        if len(smears) != self.n_layers or any(not isinstance(flag, bool) for flag in smears):
            raise ConfigError(
                f"key_smear={self.key_smear}: must be true or false, or a list of {self.n_layers} of them "
                "(one per layer)"
            )
        if any(n > 1 and not flag for n, flag in zip(lags, smears)):
            raise ConfigError(
                f"smear_lags={self.smear_lags}: more than 1 needs key_smear: true (in that layer; key_smear="
                f"{self.key_smear})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")

    def _per_layer(self, value):
        """A per-layer option as a list of one value per layer (a list as given; one value repeated)."""
        return value if isinstance(value, list) else [value] * self.n_layers

    def lags_of(self, layer: int) -> int:
        """``smear_lags`` of one layer."""
        return self._per_layer(self.smear_lags)[layer]

    def smears(self, layer: int) -> bool:
        """``key_smear`` of one layer."""
        return self._per_layer(self.key_smear)[layer]

    @property
    def any_smear(self) -> bool:
        """Whether any layer has smeared keys."""
        return any(self._per_layer(self.key_smear))


@dataclass
class KVCache:
    """Keys and values of the tokens already seen, per layer, preallocated to ``max_len`` positions.

    Layers write the new tokens at ``[length, length + T)`` (:meth:`write`); the model then moves
    ``length`` on (:meth:`advance`) once all layers have run. Build one with :meth:`LLM.new_kv_cache`.
    """

    keys: list[Tensor]
    """One ``[B, Hkv, max_len, D]`` key buffer per layer."""
    values: list[Tensor]
    """One ``[B, Hkv, max_len, D]`` value buffer per layer."""
    query_tails: list[Tensor] = field(default_factory=list)
    """With ``smear_lags = L > 1``: the last ``L - 1`` queries per layer, ``[B, H, L - 1, D]`` (zeros before the
    first), which the next tokens' queries mix in."""
    length: int = 0
    """Number of positions filled so far."""

    @property
    def max_len(self) -> int:
        """Capacity in positions."""
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        """Rows the cache was built for."""
        return self.keys[0].shape[0]

    def check_fits(self, batch_size: int, new_len: int) -> None:
        """Raise ``ValueError`` unless ``new_len`` more positions of ``batch_size`` rows fit."""
        if batch_size != self.batch_size:
            raise ValueError(f"KV cache holds {self.batch_size} rows, the input has {batch_size}")
        if self.length + new_len > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} + {new_len} positions > max_len={self.max_len}")

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new ``[B, Hkv, T, D]`` keys/values of ``layer``; return prefix + new, ``[B, Hkv, length+T, D]``."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end].to(k.dtype), self.values[layer][:, :, :end].to(v.dtype)

    def with_query_tail(self, layer: int, q: Tensor) -> Tensor:
        """The new ``[B, H, T, D]`` queries of ``layer`` behind the ones before them, ``[B, H, L - 1 + T, D]``; the
        tail moves on to the last ``L - 1`` of them."""
        queries = torch.cat([self.query_tails[layer].to(q.dtype), q], dim=2)
        self.query_tails[layer] = queries[:, :, q.shape[2] :].clone()
        return queries

    def advance(self, new_len: int) -> None:
        """Count ``new_len`` more positions as filled (after every layer has written them)."""
        self.length += new_len


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, through the shared attention backends."""

    def __init__(self, config: LLMConfig, layer: int = 0) -> None:
        super().__init__()
        self.config = config
        self.lags = config.lags_of(layer)
        qkv_width = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=False)
        self.proj = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)
        self.smear_logit = (
            nn.Parameter(torch.full((config.n_kv_heads,), config.key_smear_init)) if config.smears(layer) else None
        )
        further = self.lags - 1
        self.key_lag_weights = (
            nn.Parameter(torch.full((further * config.n_kv_heads,), config.smear_lag_init)) if further else None
        )
        self.query_lag_weights = (
            nn.Parameter(torch.full((further * config.n_heads,), config.smear_lag_init)) if further else None
        )

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        seq_ids: Tensor | None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        cfg = self.config
        batch, seq_len, _ = x.shape
        q, k, v = self.qkv(x).split(
            [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim], dim=-1
        )
        q = q.view(batch, seq_len, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(batch, seq_len, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(batch, seq_len, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is None:
            if self.smear_logit is not None:
                k = smear_keys(k, self.smear_logit, seq_ids, self.key_lag_weights)
            if self.query_lag_weights is not None:
                q = smear_queries(q, self.query_lag_weights, seq_ids)
            out = attention(q, k, v, causal=True, seq_ids=seq_ids, backend=cfg.attn_backend)  # [B, H, T, D]
        else:
            k, v = kv_cache.write(layer, k, v)  # [B, Hkv, S, D], S = cached + T; the cache keeps unsmeared keys
            if self.query_lag_weights is not None:
                tail = self.lags - 1
                q = smear_queries(kv_cache.with_query_tail(layer, q), self.query_lag_weights)[:, :, tail:]
            if self.smear_logit is not None:
                k = smear_keys(k, self.smear_logit, None, self.key_lag_weights)
            out = prefix_causal_attention(q, k, v)  # [B, H, T, D]
        return self.proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class SwiGLU(nn.Module):
    """Gated feed-forward: ``down(silu(gate(x)) * up(x))``, gate and up fused in one matmul."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: LLMConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.ffn_hidden)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        seq_ids: Tensor | None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, seq_ids, kv_cache, layer)
        return x + self.mlp(self.mlp_norm(x))


@register_backbone("llm", LLMConfig)
class LLM(nn.Module):
    """Decoder-only language model. ``rope_base`` and ``rope_yarn`` are state: they travel in the ``state_dict``."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope_base = float(config.rope_base)
        self.rope_yarn: YaRN | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal init; residual output projections scaled by ``1/sqrt(2 * n_layers)`` (GPT-2)."""
        std = self.config.init_std
        for name, param in self.named_parameters():
            if name.endswith("smear_logit"):
                nn.init.constant_(param, self.config.key_smear_init)
            elif name.endswith("lag_weights"):
                nn.init.constant_(param, self.config.smear_lag_init)
            elif param.dim() < 2:
                nn.init.ones_(param)  # RMSNorm gains
            elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(param, std=std)

    def set_rope_base(self, base: float) -> None:
        """Change the RoPE base from the next forward on (the long-context stage's switch)."""
        if base <= 0:
            raise ValueError(f"RoPE base must be positive, got {base}")
        self.rope_base = float(base)

    def set_rope_yarn(self, yarn: YaRN | None) -> None:
        """Scale the RoPE frequencies by YaRN from the next forward on (None: plain RoPE at ``rope_base``)."""
        self.rope_yarn = yarn

    def get_extra_state(self) -> dict[str, Any]:
        yarn = self.rope_yarn
        return {"rope_base": self.rope_base} | ({} if yarn is None else {"rope_yarn": [yarn.factor, yarn.original_len]})

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rope_base = float(state["rope_base"])
        yarn = state.get("rope_yarn")  # absent in checkpoints from before YaRN, and whenever it is off
        self.rope_yarn = None if yarn is None else YaRN(float(yarn[0]), int(yarn[1]))

    def hidden_states(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        replace_embeds: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Final-norm hidden states ``[B, T, d_model]``; see :meth:`forward` for the arguments."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, d]
        if replace_embeds is not None:
            mask, values = replace_embeds  # [B, T] bool, [n, d] with n = mask.sum()
            x = x.masked_scatter(mask[..., None], values.to(x.dtype))
        offset = 0
        if kv_cache is not None:
            if seq_ids is not None:
                raise ValueError("Packed seq_ids are not supported together with a KV cache; pass one or the other.")
            kv_cache.check_fits(x.shape[0], x.shape[1])
            offset = kv_cache.length
        if position_ids is None:
            position_ids = _default_positions(x, seq_ids, offset)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.rope_base, x.dtype, self.rope_yarn)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, seq_ids, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(x.shape[1])
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        replace_embeds: tuple[Tensor, Tensor] | None = None,
        head_loss: HeadLoss | None = None,
    ) -> Any:
        """Next-token logits, or a loss computed from the final hidden states in their place.

        Args:
            input_ids: ``[B, T]`` token ids (or pass ``inputs_embeds``).
            inputs_embeds: ``[B, T, d_model]`` input embeddings, e.g. with image features spliced in.
            position_ids: ``[B, T]`` RoPE positions; default restarts at each packed document.
            seq_ids: ``[B, T]`` packed-document ids (tokens attend within their id); None = one document a row.
            kv_cache: decoding state from :meth:`new_kv_cache`. The inputs are the tokens after the cached
                ones: they attend to the whole cached prefix and causally among themselves, positions default
                to ``length .. length+T-1``, and the cache grows by ``T``. Not combinable with ``seq_ids``;
                always runs on SDPA, whatever ``attn_backend`` says.
            replace_embeds: ``(mask [B, T] bool, values [n, d_model])``: the embeddings at the ``n`` masked
                positions become the rows of ``values`` in reading order (image features). Inside ``forward``,
                so that under FSDP2 the embedding is gathered by the LLM's own hooks.
            head_loss: called as ``head_loss(hidden [B, T, d_model], lm_head.weight [V, d_model])`` instead of the
                output layer, e.g. a chunked next-token loss (``NextTokenLoss.from_hidden`` with its labels bound)
                that never builds the logits whole. Inside ``forward``, so that under FSDP2 the head is gathered.

        Returns:
            ``[B, T, vocab_size]`` logits, or what ``head_loss`` returns.
        """
        hidden = self.hidden_states(input_ids, inputs_embeds, position_ids, seq_ids, kv_cache, replace_embeds)
        if head_loss is not None:
            return head_loss(hidden, self.lm_head.weight)
        return self.lm_head(hidden)

    def new_kv_cache(
        self, batch_size: int, max_len: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` rows of up to ``max_len`` positions.

        Device and dtype default to the embedding weight's.
        """
        cfg, weight = self.config, self.embed.weight
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        kwargs = {"device": device or weight.device, "dtype": dtype or weight.dtype}
        tails = [(batch_size, cfg.n_heads, cfg.lags_of(layer) - 1, cfg.head_dim) for layer in range(cfg.n_layers)]
        return KVCache(
            keys=[torch.zeros(shape, **kwargs) for _ in range(cfg.n_layers)],
            values=[torch.zeros(shape, **kwargs) for _ in range(cfg.n_layers)],
            query_tails=[torch.zeros(tail, **kwargs) for tail in tails] if any(t[2] for t in tails) else [],
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves the token embedding out."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if non_embedding else total

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Model FLOPs per token (PaLM appendix B): ``6N + 12 L T d`` for training, a third of it forward only."""
        cfg = self.config
        matmul_params = self.num_params(non_embedding=True) - self._norm_params()
        if cfg.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()  # the head is a matmul even when tied
        forward = 2 * matmul_params + 4 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
        return 3 * forward if training else forward

    def _norm_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.dim() < 2)


def _default_positions(x: Tensor, seq_ids: Tensor | None, offset: int = 0) -> Tensor:
    if seq_ids is not None:
        return position_ids_from_seq_ids(seq_ids)
    return torch.arange(offset, offset + x.shape[1], device=x.device).expand(x.shape[0], -1)


@register_preset("llm", "tiny")
def _tiny() -> LLMConfig:
    return LLMConfig(vocab_size=8192, n_layers=4, d_model=256, n_heads=8, n_kv_heads=4, ffn_hidden=688)


@register_preset("llm", "small")
def _small() -> LLMConfig:
    return LLMConfig(vocab_size=32768, n_layers=12, d_model=768, n_heads=12, n_kv_heads=4, ffn_hidden=2816)


@register_preset("llm", "1b")
def _one_b() -> LLMConfig:
    return LLMConfig(vocab_size=128256, n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8, ffn_hidden=8192)
