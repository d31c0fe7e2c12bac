"""Emoji-identity retrieval on probe images: the ViT stage's check that it sees *what* is in the image.

The demo scenes (:mod:`mm_lightning.demo.emoji_scenes`) name a background colour in every caption, so scene-level
retrieval can be won on colour alone. The probe takes colour out of the game. Its images are each demo emoji drawn
alone in the centre of a fixed canvas, once on each chosen background of the palette, captioned in the scenes'
words ("a red apple in the center on a blue background"). Retrieval runs *within one background* only:

- image -> text: each probe image ranks the captions of all emoji on its own background; a hit when its own emoji's
  caption is in the top ``k``;
- text -> image: each caption ranks the probe images of its background; a hit when its own image is in the top
  ``k``.

Recall@k is averaged over queries and then over backgrounds; chance is ``k / n`` for ``n`` emoji per background
(1/64 and 5/64 for the demo), computed from the probe's counts. Ties are scored by their expected outcome under a
random order, so a model that cannot tell the candidates apart scores chance exactly, whatever the candidates'
order.

**Colour-only baseline.** The same retrieval with the image embedding replaced by the image's mean pixel colour
(as the model sees it, from its patches) and the text embedding by the named background's colour, ranked by
(negative) distance. Within one background every caption names the same colour, so image -> text is an n-way tie
(expected recall exactly ``k / n``), and text -> image ranks the images in the same order for every caption, so
exactly ``k`` of the ``n`` captions hit: the baseline lands at chance exactly, which shows that colour cannot solve
the probe and that a model above chance tells the emoji apart.

Images are preprocessed as :class:`~mm_lightning.data.image_text.ImageTextDataModule` does
(:func:`~mm_lightning.media.images.image_patches`: ``pil_to_pixels`` then ``image_to_patches``), captions are
tokenized as its :class:`~mm_lightning.data.image_text.ImageTextTransform` does (EOD, caption, EOD, padded with
``<|pad|>``). :class:`~mm_lightning.callbacks.EmojiIdentityProbe` runs it at every validation of the ViT stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from torch import Tensor, nn

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo.corpora import DEMO_IMAGE_TEXTS
from mm_lightning.demo.emoji_scenes import (
    PALETTE,
    PLACES,
    Scene,
    SceneConfig,
    article,
    emoji_name,
    render_scene,
    vocabulary,
)
from mm_lightning.errors import ConfigError
from mm_lightning.inference import torch_threads
from mm_lightning.media.images import PIXEL_MEAN, PIXEL_STD, image_patches
from mm_lightning.ops.patches import pack_patches

PROBE_CANVAS = 9 * SceneConfig.cell
"""Probe canvas side in pixels: 9 of the scenes' cells (126 px), within their 5-10."""
PROBE_EMOJI_SIZE = 3 * SceneConfig.cell
"""Probe emoji side in pixels: 3 cells (42 px), the smaller of the scenes' two sizes, on the middle cells."""
CENTER = PLACES[(1, 1)]
KS = (1, 5)


@dataclass(frozen=True)
class ProbeSet:
    """The probe images (as patches) and captions (as token ids), one row per (background, emoji) pair."""

    captions: list[str]
    """``B`` captions in the scenes' words, background-major (all emoji on the first background, then the next)."""
    emoji: Tensor
    """``[B]`` index of each row's emoji in the demo vocabulary."""
    background: Tensor
    """``[B]`` index of each row's background in ``backgrounds``."""
    backgrounds: list[str]
    """The palette names used, in order."""
    patches: list[Tensor]
    """Per image ``[h * w, 3 * p * p]`` patches, as the datamodule cuts them."""
    grids: list[tuple[int, int]]
    """Per image its ``(h, w)`` patch grid."""
    caption_ids: Tensor
    """``[B, L]`` EOD, caption, EOD, then ``<|pad|>``: the datamodule's layout."""
    caption_mask: Tensor
    """``[B, L]`` True on caption tokens and both EODs."""

    def __len__(self) -> int:
        return len(self.captions)


def probe_backgrounds(backgrounds: Sequence[str] | int | None = None) -> list[str]:
    """The palette colours a probe uses.

    Args:
        backgrounds: colour names; or a count, the first that many of the sorted palette; ``None``: all of them.

    Raises:
        ConfigError: on a name outside the palette or a count outside ``[1, len(PALETTE)]``.
    """
    palette = sorted(PALETTE)
    if backgrounds is None:
        return palette
    if isinstance(backgrounds, int):
        if not 1 <= backgrounds <= len(palette):
            raise ConfigError(f"backgrounds must be in [1, {len(palette)}], got {backgrounds}")
        return palette[:backgrounds]
    unknown = [name for name in backgrounds if name not in PALETTE]
    if unknown or not backgrounds:
        raise ConfigError(f"Unknown backgrounds {unknown}; the palette has {', '.join(palette)}")
    return list(dict.fromkeys(backgrounds))


def probe_vocabulary() -> tuple[int, ...]:
    """The sprites of the ``demo:emoji-scenes`` vocabulary (its size and the scenes' default seed)."""
    return vocabulary(DEMO_IMAGE_TEXTS["emoji-scenes"].vocab_size, SceneConfig().seed)


def probe_caption(sprite: int, background: str) -> str:
    """The scenes' caption of one emoji in the centre: ``"a red apple in the center on a blue background"``."""
    return f"{article(emoji_name(sprite))} {CENTER} on {article(background)} background"


def render_probe(sprite: int, background: str, canvas: int = PROBE_CANVAS, size: int = PROBE_EMOJI_SIZE) -> Image.Image:
    """A ``canvas`` x ``canvas`` image of emoji ``sprite`` (``size`` px) centred on ``background``."""
    corner = (canvas - size) // 2
    scene = Scene(
        width=canvas, height=canvas, background=background, sprites=(sprite,), boxes=((corner, corner, size),),
        composition=f"place-11:{sprite}", caption=probe_caption(sprite, background),
    )  # fmt: skip
    return render_scene(scene)


def caption_token_ids(tokenizer: Tokenizer, caption: str, max_caption_len: int) -> list[int]:
    """EOD, the caption's tokens (truncated to fit ``max_caption_len``), EOD: the datamodule's caption layout."""
    eod = tokenizer_lib.eod_id(tokenizer)
    return [eod, *tokenizer_lib.encode(tokenizer, caption)[: max_caption_len - 2], eod]


def _preprocess(images: list[Image.Image], patch_size: int, max_patches: int) -> list[tuple[Tensor, tuple[int, int]]]:
    """Patches and grid of each image, on one thread as in the datamodule's workers (PyTorch sets one there).

    Per-image ops are too small to share between threads: on a busy 2-core CPU, threads waiting for each other made
    this 50x slower (6 s instead of 0.1 s for 128 images).
    """
    with torch_threads(1):
        return [image_patches(image, patch_size, max_patches) for image in images]


def build_probe_set(
    tokenizer: Tokenizer,
    patch_size: int,
    max_patches: int,
    max_caption_len: int,
    backgrounds: Sequence[str] | int | None = None,
    canvas: int = PROBE_CANVAS,
    emoji_size: int = PROBE_EMOJI_SIZE,
) -> ProbeSet:
    """Every demo emoji centred alone on each chosen background, preprocessed as the image-text datamodule does.

    Args:
        tokenizer: the datamodule's tokenizer.
        patch_size: the datamodule's patch side in pixels.
        max_patches: the datamodule's cap on patches per image.
        max_caption_len: the datamodule's caption length ``L`` (both EODs included).
        backgrounds: which backgrounds (see :func:`probe_backgrounds`).
        canvas: canvas side in pixels.
        emoji_size: emoji side in pixels.

    Returns:
        ``len(backgrounds) * 64`` rows, background-major.
    """
    names = probe_backgrounds(backgrounds)
    sprites = probe_vocabulary()
    rows = [(b, e) for b in range(len(names)) for e in range(len(sprites))]
    images = [render_probe(sprites[e], names[b], canvas, emoji_size) for b, e in rows]
    patches, grids = zip(*_preprocess(images, patch_size, max_patches), strict=True)
    captions = [probe_caption(sprites[e], names[b]) for b, e in rows]
    caption_ids = torch.full((len(rows), max_caption_len), tokenizer_lib.PAD_ID, dtype=torch.long)  # [B, L]
    caption_mask = torch.zeros(len(rows), max_caption_len, dtype=torch.bool)  # [B, L]
    for row, caption in enumerate(captions):
        ids = caption_token_ids(tokenizer, caption, max_caption_len)
        caption_ids[row, : len(ids)] = torch.tensor(ids)
        caption_mask[row, : len(ids)] = True
    return ProbeSet(
        captions=captions, emoji=torch.tensor([e for _, e in rows]), background=torch.tensor([b for b, _ in rows]),
        backgrounds=names, patches=list(patches), grids=list(grids), caption_ids=caption_ids, caption_mask=caption_mask,
    )  # fmt: skip


def embed_probe(vit: nn.Module, coca: nn.Module, probe: ProbeSet, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Image and text embeddings of the probe set, ``batch_size`` pairs per forward (as ``ViTCoCaStage.forward``).

    The caller chooses the mode (eval) and the grad context (``torch.no_grad``); every rank must call it alike
    under FSDP2, whose forwards are collective.

    Returns:
        ``image_embed`` ``[B, E]`` and ``text_embed`` ``[B, E]`` on the CPU, in float32.
    """
    parameter = next(vit.parameters())
    images, texts = [], []
    for start in range(0, len(probe), batch_size):
        rows = slice(start, start + batch_size)
        batch = pack_patches(probe.patches[rows], probe.grids[rows])
        patches = batch["patches"].to(parameter.device, parameter.dtype)  # [1, N, 3p²]
        seq_ids = batch["seq_ids"].to(parameter.device)  # [1, N]
        features = vit(patches, batch["grid_hw"].to(parameter.device), seq_ids)  # [1, N, D]
        # the padding after the last EOD cannot change what a causal encoder reads at the EOD: cut it (the decoder's
        # logits, unused here, then cost less)
        width = int(probe.caption_mask[rows].sum(dim=1).max())
        caption_ids, caption_mask = (
            t[rows, :width].to(parameter.device) for t in (probe.caption_ids, probe.caption_mask)
        )
        out = coca(features, seq_ids, caption_ids, caption_mask)  # [B, E] embeddings
        images.append(out["image_embed"].float().cpu())
        texts.append(out["text_embed"].float().cpu())
    return torch.cat(images), torch.cat(texts)


def _expected_hits(scores: Tensor, k: int) -> Tensor:
    """Per query row, the chance that its target (the diagonal) lands in the top ``k``, ties in random order."""
    target = scores.diagonal()[:, None]  # [n, 1]
    above = (scores > target).sum(dim=1)  # [n]
    tied = (scores == target).sum(dim=1)  # [n], the target included
    return ((k - above) / tied).clamp(0.0, 1.0)


def identity_recall(similarity: Tensor, emoji: Tensor, background: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k of emoji identity, retrieving only among the candidates that share the query's background.

    Args:
        similarity: ``[B images, B texts]`` scores (higher = closer); image ``i`` pairs with text ``i``.
        emoji: ``[B]`` emoji of each pair.
        background: ``[B]`` background of each pair.
        ks: the ``k`` values.

    Returns:
        ``{"i2t_r@k": ..., "t2i_r@k": ..., "chance_r@k": ...}``, each the mean over backgrounds.

    Raises:
        ValueError: when an emoji appears twice on one background (its identity would be ambiguous).
    """
    per_background: dict[str, list[float]] = {}
    for value in background.unique():
        rows = (background == value).nonzero().flatten()  # [n]
        if emoji[rows].unique().numel() != rows.numel():
            raise ValueError(f"background {int(value)} repeats an emoji")
        block = similarity[rows][:, rows]  # [n images, n texts]
        for k in ks:
            per_background.setdefault(f"i2t_r@{k}", []).append(_expected_hits(block, k).mean().item())
            per_background.setdefault(f"t2i_r@{k}", []).append(_expected_hits(block.T, k).mean().item())
            per_background.setdefault(f"chance_r@{k}", []).append(min(k, rows.numel()) / rows.numel())
    return {name: sum(values) / len(values) for name, values in per_background.items()}


def colour_features(probe: ProbeSet) -> tuple[Tensor, Tensor]:
    """Shape-blind features: each image's mean pixel colour and each caption's named background colour.

    Returns:
        ``[B, 3]`` mean pixel of each image's patches and ``[B, 3]`` its caption's background, both in pixel units
        (the datamodule's [-1, 1]).
    """
    image = torch.stack([p.view(p.shape[0], 3, -1).mean(dim=(0, 2)) for p in probe.patches])  # [B, 3]
    palette = torch.tensor([PALETTE[name] for name in probe.backgrounds], dtype=torch.float32)  # [C, 3]
    text = (palette / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return image, text[probe.background]


def emoji_probe_metrics(
    vit: nn.Module, coca: nn.Module, probe: ProbeSet, batch_size: int = 16, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Score a ViT + CoCa heads on the probe, beside its chance and the colour-only baseline.

    Returns:
        ``i2t_r@k``, ``t2i_r@k``, ``chance_r@k`` and ``colour_only_r@k`` (the baseline's mean over both directions)
        for every ``k``.
    """
    image_embed, text_embed = embed_probe(vit, coca, probe, batch_size)
    similarity = F.normalize(image_embed, dim=-1) @ F.normalize(text_embed, dim=-1).T  # [B, B] cosine
    metrics = identity_recall(similarity, probe.emoji, probe.background, ks)
    colour_image, colour_text = colour_features(probe)
    baseline = identity_recall(-torch.cdist(colour_image, colour_text), probe.emoji, probe.background, ks)
    for k in ks:
        metrics[f"colour_only_r@{k}"] = (baseline[f"i2t_r@{k}"] + baseline[f"t2i_r@{k}"]) / 2
    return metrics
