"""Evaluation metrics computed from whole validation sets.

Zero-shot retrieval recall@k (CLIP, Radford et al. 2021): each image ranks every caption of the set by
embedding similarity (image -> text), and each caption ranks every image (text -> image). A hit counts
when a retrieved item carries the same caption text as the query's own pair, so sets that repeat a
caption do not punish the model for picking the twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def retrieval_recall(
    image_embed: Tensor, text_embed: Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image->text and text->image recall@k over a set of ``B`` image-caption pairs.

    Args:
        image_embed: ``[B, E]`` image embeddings (any scale; cosine similarity is used).
        text_embed: ``[B, E]`` text embeddings; row ``i`` pairs with image ``i``.
        captions: the ``B`` caption strings; equal strings count as the same caption.
        ks: the ``k`` values.

    Returns:
        ``{"i2t_r@1": ..., "t2i_r@1": ..., ..., "chance_r@1": ...}`` as fractions in [0, 1].
    """
    if not (len(image_embed) == len(text_embed) == len(captions)):
        raise ValueError(f"{len(image_embed)} images, {len(text_embed)} texts and {len(captions)} captions differ")
    ids = {caption: index for index, caption in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])  # [B]
    same = caption_id[:, None] == caption_id[None, :]  # [B, B] pair (i, j) shares a caption
    images, texts = F.normalize(image_embed.float(), dim=-1), F.normalize(text_embed.float(), dim=-1)
    similarity = images @ texts.T  # [B images, B texts]
    results: dict[str, float] = {}
    for k in ks:
        k_eff = min(k, len(captions))
        top_texts = similarity.topk(k_eff, dim=1).indices  # [B, k]
        top_images = similarity.T.topk(k_eff, dim=1).indices  # [B, k]
        results[f"i2t_r@{k}"] = same.gather(1, top_texts).any(dim=1).float().mean().item()
        results[f"t2i_r@{k}"] = same.gather(1, top_images).any(dim=1).float().mean().item()
        results[f"chance_r@{k}"] = min(1.0, k_eff / len(ids))
    return results
