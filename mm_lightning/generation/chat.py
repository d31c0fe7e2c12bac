"""Answering chat prompts with a VLM: a conversation's ids with its images, greedily continued to the end of turn.

The prompts come from :func:`mm_lightning.chat.prompt_ids` (the conversation so far and the assistant marker) with
each image as one ``<|image|>`` and its patches beside; here every placeholder expands to the projector's token
count, the images pass the ViT, and generation stops at :data:`~mm_lightning.chat.END_OF_TURN_ID`. No Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mm_lightning.chat import END_OF_TURN_ID, answer_text
from mm_lightning.generation.decode import greedy_each
from mm_lightning.inference import evaluating
from mm_lightning.models.vlm import VLM, expand_image_placeholders
from mm_lightning.ops.patches import pack_patches
from mm_lightning.tokenizer import IMAGE_ID

ImagePatches = tuple[Tensor, tuple[int, int]]  # patches [h * w, 3 * p * p] and the grid (h, w)


def chat_prompt_embeds(vlm: VLM, ids: Sequence[int], images: Sequence[ImagePatches]) -> Tensor:
    """Input embeddings ``[1, T, d]`` of a prompt with one ``<|image|>`` per image of ``images``."""
    device = next(vlm.parameters()).device
    expanded = expand_image_placeholders(list(ids), [vlm.projector.num_tokens(*grid) for _, grid in images], IMAGE_ID)
    input_ids = torch.tensor([expanded], device=device)
    if not images:
        return vlm.llm.embed(input_ids)
    packed = pack_patches([patches for patches, _ in images], [grid for _, grid in images])
    return vlm.embed(input_ids, packed["patches"].to(device), packed["grid_hw"].to(device),
                     packed["seq_ids"].to(device))  # fmt: skip


@torch.no_grad()
def answer_prompts(
    vlm: VLM, tokenizer, prompts: Sequence[tuple[Sequence[int], Sequence[ImagePatches]]], max_new_tokens: int = 16,
    batch_size: int = 32,
) -> list[str]:  # fmt: skip
    """Greedy answers to ``(prompt_ids, images)`` pairs, in order, in eval mode.

    Prompts of equal length decode together (no padding, so each answer is the one it would be alone).
    """
    with evaluating(vlm):
        embeds = [chat_prompt_embeds(vlm, ids, images) for ids, images in prompts]
        rows = greedy_each(vlm.llm, embeds, max_new_tokens, END_OF_TURN_ID, batch_size)
    return [answer_text(tokenizer, row) for row in rows]
