"""Captioning and describing images with a VLM, preprocessed exactly as its training did; no Lightning.

A prompt is the image span the alignment and joint stages train on (``<|image_start|>``, the image's merged
tokens, ``<|image_end|>``), then optional text; greedy decoding continues it to the end of the document.
:class:`ImagePreprocessing` says how pixels become patches (patch side, cap on patches per image); a checkpoint
records the one its stage trained with, so ``generate`` and every evaluation feed the grids the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.generation.decode import greedy_each
from mm_lightning.inference import evaluating
from mm_lightning.media.images import ImagePreprocessing, pil_to_pixels
from mm_lightning.models.vlm import VLM, expand_image_placeholders
from mm_lightning.ops.patches import image_to_patches, pack_patches
from mm_lightning.tokenizer import IMAGE_ID, IMAGE_SPAN


def image_prompt(vlm: VLM, image: Image.Image | Tensor, preprocessing: ImagePreprocessing,
                 text_ids: Sequence[int] = ()) -> Tensor:  # fmt: skip
    """Input embeddings ``[1, T, d]`` of ``<|image_start|> image tokens <|image_end|> text_ids``.

    Args:
        vlm: the model.
        image: a PIL image, or pixels ``[3, H, W]`` in [-1, 1] (:func:`~mm_lightning.media.images.pil_to_pixels`).
        preprocessing: the patching the model trained with.
        text_ids: token ids after the image span.
    """
    pixels = pil_to_pixels(image) if isinstance(image, Image.Image) else image
    patches, grid = image_to_patches(pixels, preprocessing.patch_size, preprocessing.max_patches)
    packed = pack_patches([patches], [grid])
    device = next(vlm.parameters()).device
    ids = expand_image_placeholders([*IMAGE_SPAN, *text_ids], [vlm.projector.num_tokens(*grid)], IMAGE_ID)
    return vlm.embed(torch.tensor([ids], device=device), packed["patches"].to(device), packed["grid_hw"].to(device),
                     packed["seq_ids"].to(device))  # fmt: skip


def packed_image_prompts(vlm: VLM, patches: Tensor, grid_hw: Tensor, patch_seq_ids: Tensor) -> list[Tensor]:
    """Input embeddings ``[1, T_i, d]`` of ``<|image_start|> image tokens <|image_end|>`` for each image of a packed
    batch (``patches`` ``[1, N, 3p²]``, ``grid_hw`` ``[n, 2]``, ``patch_seq_ids`` ``[1, N]``), in one ViT pass."""
    counts = [vlm.projector.num_tokens(h, w) for h, w in grid_hw.tolist()]
    ids = expand_image_placeholders(list(IMAGE_SPAN) * len(counts), counts, IMAGE_ID)
    embeds = vlm.embed(torch.tensor([ids], device=patches.device), patches, grid_hw, patch_seq_ids)  # [1, T, d]
    return list(embeds.split([count + 2 for count in counts], dim=1))


def decode_text(tokenizer, new_ids: Sequence[int]) -> str:
    """The text of generated ids: cut at the first end of document, special tokens dropped."""
    eod = tokenizer_lib.eod_id(tokenizer)
    ids = list(new_ids)
    ids = ids[: ids.index(eod)] if eod in ids else ids
    return tokenizer_lib.decode_generated(tokenizer, ids)


@torch.no_grad()
def caption_images(vlm: VLM, tokenizer, images: Sequence[Image.Image | Tensor], preprocessing: ImagePreprocessing,
                   max_new_tokens: int = 48, stop_at_eod: bool = True, batch_size: int = 32) -> list[str]:  # fmt: skip
    """Greedy captions of ``images`` in eval mode, in order.

    Images whose prompts have the same number of tokens decode together, up to ``batch_size`` at a time (no padding,
    so each caption is the one it would be alone). With ``stop_at_eod`` False every batch takes ``max_new_tokens``
    forward passes (each text still ends at its first end of document): ranks that share FSDP2 collectives then run
    the same number whatever they decode.
    """
    with evaluating(vlm):
        prompts = [image_prompt(vlm, image, preprocessing) for image in images]  # [1, T_i, d] each
        return caption_prompts(vlm, tokenizer, prompts, max_new_tokens, stop_at_eod, batch_size)


@torch.no_grad()
def caption_prompts(vlm: VLM, tokenizer, prompts: Sequence[Tensor], max_new_tokens: int = 48,
                    stop_at_eod: bool = True, batch_size: int = 32) -> list[str]:  # fmt: skip
    """Greedy continuations of prompt embeddings ``[1, T_i, d]`` (:func:`image_prompt`), in order, as
    :func:`caption_images` decodes them (the model's train/eval mode is left as it is)."""
    eos_id = tokenizer_lib.eod_id(tokenizer) if stop_at_eod else None
    rows = greedy_each(vlm.llm, prompts, max_new_tokens, eos_id, batch_size)
    return [decode_text(tokenizer, row) for row in rows]
