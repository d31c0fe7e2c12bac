"""Multimodal rows for the VLM from image-caption batches: each image's merged tokens, then its caption.

A batch of ``ImageTextDataModule`` becomes one packed row (no padding): sample ``i`` is its image span
(``<|image_start|>``, ``n_i`` image placeholders, ``<|image_end|>``: the layout the joint stages' mixture
uses too) followed by its caption and EOD, with its own packed-sequence id; targets are the next tokens, and
a target inside the image span is ignored, so the loss is the caption given the image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.ops.packing import position_ids_from_seq_ids
from mm_lightning.tokenizer import IMAGE_END_ID, IMAGE_START_ID


def caption_rows(batch: dict, tokens_per_image: Callable[[int, int], int], image_token_id: int) -> dict[str, Tensor]:
    """``input_ids``, ``labels``, ``seq_ids``, ``position_ids`` ``[1, T]`` for captioning through the LLM.

    Args:
        batch: an image-text batch (``grid_hw`` ``[B, 2]``, ``caption_ids``/``caption_mask`` ``[B, L]`` whose
            real tokens are EOD, the caption, EOD).
        tokens_per_image: merged tokens of an image with an ``(h, w)`` patch grid (the projector's ``num_tokens``).
        image_token_id: the ``<|image|>`` id.
    """
    inputs, targets, ids = [], [], []
    for index, ((h, w), caption, mask) in enumerate(zip(batch["grid_hw"].tolist(), batch["caption_ids"],
                                                        batch["caption_mask"], strict=True)):  # fmt: skip
        words = caption[mask][1:]  # drop the opening EOD: the image is the prompt
        image = torch.full((tokens_per_image(h, w),), image_token_id, device=words.device)
        start, end = (torch.tensor([marker], device=words.device) for marker in (IMAGE_START_ID, IMAGE_END_ID))
        sequence = torch.cat([start, image, end, words])
        inputs.append(sequence[:-1])
        targets.append(mask_image_targets(sequence[1:], image_token_id))
        ids.append(torch.full((len(sequence) - 1,), index, device=words.device))
    seq_ids = torch.cat(ids)[None]  # [1, T]
    return {
        "input_ids": torch.cat(inputs)[None],
        "labels": torch.cat(targets)[None],
        "seq_ids": seq_ids,
        "position_ids": position_ids_from_seq_ids(seq_ids),
    }


def mask_image_targets(targets: Tensor, image_token_id: int) -> Tensor:
    """Targets with every image placeholder and span marker ignored (images are inputs, never predicted)."""
    in_span = (targets == image_token_id) | (targets == IMAGE_START_ID) | (targets == IMAGE_END_ID)
    return targets.masked_fill(in_span, IGNORE_INDEX)
