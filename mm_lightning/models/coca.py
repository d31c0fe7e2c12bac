"""The text side of CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models").

Kimi-VL trains its ViT first with a CoCa loss: SigLIP's pairwise sigmoid contrastive loss (Zhai et al. 2023)
plus captioning through a tiny text decoder. This module holds everything except the ViT:

- a **unimodal causal text encoder** (token + learned position embeddings, causal self-attention blocks);
  the text embedding is read at each caption's last real token (its EOD; ``text_pool: mean`` averages all of
  the caption's states instead) and projected to ``embed_dim``;
- an **attentional pooler**: learned queries cross-attend to one image's patch features. Query 0 gives the
  image embedding for the contrastive loss (``image_pool: attentional``, the paper's), the other
  ``n_image_queries`` are the image tokens the decoder reads. ``image_pool: max`` takes the contrastive
  embedding from the channel-wise maximum of the image's normalised patch features instead;
- a **multimodal text decoder**: blocks with causal self-attention and cross-attention to the pooled image
  tokens, continuing from the unimodal encoder's hidden states (as in the paper), then next-token logits, or
  in training their loss straight from the decoder's states, so that the logits never exist whole;
- the learnable **logit scale and bias** (SigLIP init: ``exp(scale) = 10``, bias ``-10``). They live here,
  not in the loss, so that they are sharded and gradient-synchronised with the model under FSDP2 and
  saved with the backbone; the forward returns them and the losses take them as inputs. Each is a
  1-element parameter (``[1]``), since FSDP2's ``fully_shard`` refuses 0-d ones; a checkpoint that stored
  them 0-d (before FSDP2 support) still loads.

The image features arrive packed NaViT-style, ``[1, N, vision_dim]`` with ``seq_ids [1, N]`` naming the
image of every patch. The pooler scatters them into a per-image padded layout ``[B, P_max, vision_dim]``
with a key mask, so a query only ever sees its own image's patches.

Why not open_clip's ``AttentionalPooler`` / ``Transformer``: they are built on ``nn.MultiheadAttention``,
so they bypass the project's attention backends, and the pooler takes no key mask, so on a padded
per-image layout its queries would attend to padding. Self-attention here goes through
``mm_lightning.ops.attention.attention``; cross-attention (queries and keys of different lengths, which
that interface does not cover: its xformers path assumes q and k share one packed layout) calls
PyTorch SDPA directly with a boolean key mask.

Why the ``max`` and ``mean`` readouts: trained from scratch, an attentional query starts out averaging the
patches, so an object that covers a few of up to a hundred patches (the demo's emoji) barely moves the image
embedding, and the text embedding read at one token barely depends on a name early in the caption; neither side
then gives the other a gradient towards the object. Measured with ``benchmarks/vit_identity_budget.py`` (tiny
ViT, emoji-identity probe, 240 steps): query 0 and the EOD state stay at chance (1/64), max and mean reach
about 0.35. Pretrained towers (SigLIP's) do not have this cold start, so the presets keep the paper's readouts
and the demo config switches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm_lightning.errors import ConfigError
from mm_lightning.models.llm import HeadLoss
from mm_lightning.models.registry import register_backbone, register_preset
from mm_lightning.ops.attention import attention

IMAGE_POOLS = ("attentional", "max")
TEXT_POOLS = ("last", "mean")


@dataclass
class CoCaConfig:
    """Architecture of the CoCa text encoder, attentional pooler and multimodal text decoder."""

    vocab_size: int = 8192
    """Size of the caption vocabulary (the project tokenizer: ``<|endoftext|>`` = 0 ends a caption, pad = 1)."""
    d_model: int = 128
    """Width of the text transformer's residual stream (and of the pooled image tokens)."""
    n_heads: int = 4
    """Number of attention heads (self- and cross-attention, and the pooler)."""
    n_unimodal_layers: int = 2
    """Causal text-only blocks; the text embedding is read after them."""
    n_multimodal_layers: int = 2
    """Decoder blocks with causal self-attention plus cross-attention to the pooled image tokens."""
    mlp_hidden: int = 512
    """Hidden width of every block's GELU feed-forward."""
    max_text_len: int = 64
    """Longest caption in tokens (rows of the learned position embedding)."""
    vision_dim: int = 128
    """Width of the ViT's output patch features that the pooler attends to."""
    embed_dim: int = 128
    """Width of the shared contrastive embedding space."""
    n_image_queries: int = 16
    """Pooled image tokens the decoder cross-attends to (the pooler has one more, the contrastive query)."""
    image_pool: str = "attentional"
    """Contrastive image embedding: ``attentional`` (the pooler's query 0) or ``max`` (channel-wise max over the
    image's layer-normalised patch features, then a projection)."""
    text_pool: str = "last"
    """Contrastive text embedding: ``last`` (the state at the caption's EOD) or ``mean`` (over its real tokens)."""
    logit_scale_init: float = math.log(10.0)
    """Initial log of the contrastive logit scale: ``log(10)`` for SigLIP, ``log(1/0.07)`` for CLIP."""
    logit_bias_init: float = -10.0
    """Initial contrastive logit bias (SigLIP); the softmax loss ignores the bias."""
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorms."""
    attn_backend: str = "auto"
    """Self-attention backend: ``auto`` (xformers on CUDA when available, else SDPA), ``sdpa`` or ``xformers``."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init."""
    head_dim: int = field(init=False)
    """Per-head width, derived: ``d_model // n_heads``."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_image_queries < 1:
            raise ConfigError(f"n_image_queries must be at least 1, got {self.n_image_queries}")
        if self.image_pool not in IMAGE_POOLS:
            raise ConfigError(f"image_pool must be one of {', '.join(IMAGE_POOLS)}, got {self.image_pool!r}")
        if self.text_pool not in TEXT_POOLS:
            raise ConfigError(f"text_pool must be one of {', '.join(TEXT_POOLS)}, got {self.text_pool!r}")
        self.head_dim = self.d_model // self.n_heads


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[B, T, H * D] -> [B, H, T, D]``."""
    batch, seq_len, width = x.shape
    return x.view(batch, seq_len, n_heads, width // n_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[B, H, T, D] -> [B, T, H * D]``."""
    batch, n_heads, seq_len, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq_len, n_heads * head_dim)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention through the shared attention backends."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        self.n_heads, self.backend = config.n_heads, config.attn_backend
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # [B, H, T, D] each
        return self.proj(_merge_heads(attention(q, k, v, causal=True, backend=self.backend)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from ``d_model`` queries to ``kv_dim`` keys/values, with a key mask."""

    def __init__(self, d_model: int, kv_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(kv_dim, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, Tq, d_model]``, ``context`` ``[B, Tk, kv_dim]``, ``key_mask`` ``[B, Tk]`` (True = attend)."""
        q = _split_heads(self.q(x), self.n_heads)  # [B, H, Tq, D]
        k, v = (_split_heads(t, self.n_heads) for t in self.kv(context).chunk(2, dim=-1))  # [B, H, Tk, D]
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, Tk]
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class MLP(nn.Module):
    """GELU feed-forward ``fc2(gelu(fc1(x)))``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TextBlock(nn.Module):
    """Pre-norm causal text block; with ``cross_attention`` it also reads the pooled image tokens."""

    def __init__(self, config: CoCaConfig, cross_attention: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.cross_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if cross_attention else None
        self.cross_attn = CrossAttention(config.d_model, config.d_model, config.n_heads) if cross_attention else None
        self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.mlp_hidden)

    def forward(self, x: Tensor, image_tokens: Tensor | None = None) -> Tensor:
        """``x`` ``[B, L, d_model]``; ``image_tokens`` ``[B, Q, d_model]`` (multimodal blocks only)."""
        x = x + self.attn(self.attn_norm(x))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), image_tokens)
        return x + self.mlp(self.mlp_norm(x))


class AttentionalPooler(nn.Module):
    """Learned queries cross-attending to each image's own patches (CoCa's task-specific attentional pooling)."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.empty(1 + config.n_image_queries, config.d_model))
        self.query_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.key_norm = nn.LayerNorm(config.vision_dim, eps=config.norm_eps)
        self.attn = CrossAttention(config.d_model, config.vision_dim, config.n_heads)
        self.out_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def forward(self, image_features: Tensor, image_seq_ids: Tensor, n_images: int) -> Tensor:
        """Pool packed patches per image: ``[1, N, Dv]``, ``[1, N]`` -> ``[n_images, 1 + Q, d_model]``."""
        patches, key_mask = pad_images(image_features, image_seq_ids, n_images)  # [B, P, Dv], [B, P]
        queries = self.query_norm(self.queries).expand(n_images, -1, -1)  # [B, 1 + Q, d]
        return self.out_norm(self.attn(queries, self.key_norm(patches), key_mask))


def pad_images(features: Tensor, seq_ids: Tensor, n_images: int) -> tuple[Tensor, Tensor]:
    """Scatter packed patch features into a per-image padded layout.

    Args:
        features: ``[1, N, Dv]`` packed patch features (several images in one row, NaViT style).
        seq_ids: ``[1, N]`` image index of every patch; ids outside ``[0, n_images)`` (padding) are dropped.
        n_images: the number of images ``B``.

    Returns:
        ``[B, P_max, Dv]`` patches of each image (zeros after its last patch) and the ``[B, P_max]`` mask
        of real patches.

    Raises:
        ValueError: when an image has no patch (its queries would have nothing to attend to).
    """
    ids, flat = seq_ids.flatten(), features.flatten(0, -2)  # [N], [N, Dv]
    keep = (ids >= 0) & (ids < n_images)
    ids, flat = ids[keep], flat[keep]
    order = torch.argsort(ids, stable=True)
    ids, flat = ids[order], flat[order]  # grouped by image, patch order kept
    counts = torch.bincount(ids, minlength=n_images)  # [B]
    counts_list = counts.tolist()  # the one host sync: P_max sizes the padded tensor
    if min(counts_list) == 0:
        raise ValueError(f"Every image needs at least one patch; patches per image: {counts_list}")
    starts = torch.cumsum(counts, 0) - counts  # [B]
    positions = torch.arange(ids.numel(), device=ids.device) - starts[ids]  # [N'] index within its image
    padded = flat.new_zeros(n_images, max(counts_list), flat.shape[-1])  # [B, P, Dv]
    padded[ids, positions] = flat
    key_mask = torch.arange(padded.shape[1], device=ids.device) < counts[:, None]  # [B, P]
    return padded, key_mask


def last_token_index(caption_mask: Tensor) -> Tensor:
    """Index of each row's last real token (its EOD for right-padded captions). ``[B, L] -> [B]``."""
    positions = torch.arange(caption_mask.shape[1], device=caption_mask.device)
    return torch.where(caption_mask.bool(), positions, -1).amax(dim=1).clamp(min=0)


@register_backbone("coca", CoCaConfig)
class CoCaHeads(nn.Module):
    """CoCa's text encoder, attentional pooler, multimodal decoder and contrastive logit scale/bias.

    ``blocks`` holds the unimodal blocks then the multimodal ones, so that the ``apply_*`` functions wrap
    all of them.
    """

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Parameter(torch.empty(config.max_text_len, config.d_model))
        self.blocks = nn.ModuleList(
            [TextBlock(config, cross_attention=False) for _ in range(config.n_unimodal_layers)]
            + [TextBlock(config, cross_attention=True) for _ in range(config.n_multimodal_layers)]
        )
        self.text_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.text_proj = nn.Linear(config.d_model, config.embed_dim, bias=False)
        self.pooler = AttentionalPooler(config)
        max_pool = config.image_pool == "max"
        self.image_norm = nn.LayerNorm(config.vision_dim, eps=config.norm_eps) if max_pool else None
        self.image_proj = nn.Linear(config.vision_dim if max_pool else config.d_model, config.embed_dim, bias=False)
        self.decoder_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.empty(1))  # [1]: fully_shard refuses 0-d parameters
        self.logit_bias = nn.Parameter(torch.empty(1))  # [1]
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Also load a checkpoint that stored the logit scale and bias 0-d, as they were before FSDP2 support."""
        for name in ("logit_scale", "logit_bias"):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.dim() == 0:
                state_dict[prefix + name] = value.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        """Normal init; residual output projections scaled by ``1/sqrt(2 * n_blocks)``; SigLIP scale and bias."""
        cfg = self.config
        residual_std = cfg.init_std / math.sqrt(2 * max(len(self.blocks), 1))
        for name, module in self.named_modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=cfg.init_std)
            elif isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("attn.proj", "mlp.fc2"))
                nn.init.normal_(module.weight, std=residual_std if is_residual_out else cfg.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embed, std=cfg.init_std)
        nn.init.normal_(self.pooler.queries, std=cfg.init_std)
        nn.init.constant_(self.logit_scale, cfg.logit_scale_init)
        nn.init.constant_(self.logit_bias, cfg.logit_bias_init)

    def forward(
        self,
        image_features: Tensor,
        image_seq_ids: Tensor,
        caption_ids: Tensor,
        caption_mask: Tensor,
        caption_loss: HeadLoss | None = None,
    ) -> dict[str, Any]:
        """Contrastive embeddings of images and captions, and caption logits (or their loss) given the image.

        Args:
            image_features: ``[1, N, vision_dim]`` packed ViT patch features of ``B`` images.
            image_seq_ids: ``[1, N]`` image index (0..B-1) of every patch; other ids mark padding.
            caption_ids: ``[B, L]`` caption tokens ending with EOD, right-padded; caption ``i`` describes image ``i``.
            caption_mask: ``[B, L]`` 1/True on real tokens (EOD included), 0/False on padding.
            caption_loss: called as ``caption_loss(states [B, L, d_model], lm_head.weight [V, d_model])`` with the
                decoder's normalised states instead of the output layer, e.g. a chunked caption loss
                (``CoCaLoss.caption_head_loss``) that never builds the logits whole. Inside ``forward``, so that
                under FSDP2 the head is gathered (as ``LLM.forward``'s ``head_loss``).

        Returns:
            ``image_embed`` ``[B, E]`` and ``text_embed`` ``[B, E]`` (L2-normalised); ``caption_logits``
            ``[B, L, V]`` (position ``t`` predicts token ``t + 1``), or with ``caption_loss`` what it returns as
            ``caption_loss``; ``logit_scale`` (``exp`` of the learnable log-scale, capped at 100) and
            ``logit_bias``, both ``[1]`` (they broadcast like scalars).
        """
        n_images, seq_len = caption_ids.shape
        if seq_len > self.config.max_text_len:
            raise ValueError(f"Captions of {seq_len} tokens exceed max_text_len={self.config.max_text_len}")
        image_tokens, image_embed = self.encode_image(image_features, image_seq_ids, n_images)  # [B, Q, d], [B, E]
        text_states, text_embed = self.encode_text(caption_ids, caption_mask)  # [B, L, d], [B, E]
        states = self.decode_states(text_states, image_tokens)  # [B, L, d]
        if caption_loss is None:
            caption = {"caption_logits": self.lm_head(states)}  # [B, L, V]
        else:
            caption = {"caption_loss": caption_loss(states, self.lm_head.weight)}
        return {
            "image_embed": image_embed,
            "text_embed": text_embed,
            **caption,
            "logit_scale": self.logit_scale.exp().clamp(max=100.0),
            "logit_bias": self.logit_bias,
        }

    def encode_image(self, image_features: Tensor, image_seq_ids: Tensor, n_images: int) -> tuple[Tensor, Tensor]:
        """The decoder's pooled image tokens ``[B, Q, d]`` and the normalised image embedding ``[B, E]``.

        ``image_features`` ``[1, N, vision_dim]`` and ``image_seq_ids`` ``[1, N]`` are packed as in :meth:`forward`.
        """
        pooled = self.pooler(image_features, image_seq_ids, n_images)  # [B, 1 + Q, d]
        if self.image_norm is None:
            return pooled[:, 1:], F.normalize(self.image_proj(pooled[:, 0]), dim=-1)
        patches, key_mask = pad_images(self.image_norm(image_features), image_seq_ids, n_images)  # [B, P, Dv]
        strongest = patches.masked_fill(~key_mask[..., None], float("-inf")).amax(dim=1)  # [B, Dv]
        return pooled[:, 1:], F.normalize(self.image_proj(strongest), dim=-1)

    def encode_text(self, caption_ids: Tensor, caption_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Unimodal blocks: hidden states ``[B, L, d]`` and the normalised text embedding ``[B, E]``."""
        x = self.embed(caption_ids) + self.pos_embed[: caption_ids.shape[1]]  # [B, L, d]
        for block in self.blocks[: self.config.n_unimodal_layers]:
            x = block(x)
        if self.config.text_pool == "mean":
            weights = caption_mask.to(x.dtype)[..., None]  # [B, L, 1]
            read = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, d]
        else:
            read = x[torch.arange(x.shape[0], device=x.device), last_token_index(caption_mask)]  # [B, d]
        return x, F.normalize(self.text_proj(self.text_norm(read)), dim=-1)

    def decode_states(self, text_states: Tensor, image_tokens: Tensor) -> Tensor:
        """Multimodal blocks over the unimodal states, reading ``image_tokens`` ``[B, Q, d]``: the normalised hidden
        states ``[B, L, d]`` that the output layer ``lm_head`` reads."""
        x = text_states
        for block in self.blocks[self.config.n_unimodal_layers :]:
            x = block(x, image_tokens)
        return self.decoder_norm(x)


@register_preset("coca", "tiny")
def _tiny() -> CoCaConfig:
    return CoCaConfig(
        vocab_size=8192, d_model=128, n_heads=4, n_unimodal_layers=2, n_multimodal_layers=2, mlp_hidden=512,
        vision_dim=128, embed_dim=128, n_image_queries=16,
    )  # fmt: skip


@register_preset("coca", "small")
def _small() -> CoCaConfig:
    return CoCaConfig(
        vocab_size=32768, d_model=384, n_heads=6, n_unimodal_layers=4, n_multimodal_layers=4, mlp_hidden=1536,
        vision_dim=384, embed_dim=384, n_image_queries=64,
    )  # fmt: skip


@register_preset("coca", "so400m")
def _so400m() -> CoCaConfig:
    return CoCaConfig(
        vocab_size=32768, d_model=768, n_heads=12, n_unimodal_layers=6, n_multimodal_layers=6, mlp_hidden=3072,
        vision_dim=1152, embed_dim=1152, n_image_queries=256,
    )  # fmt: skip
