"""The vision-language model: LLM + ViT + projector, assembled from registry backbones (Kimi-VL's layout).

A multimodal sample is text in which each image is one ``<|image|>`` placeholder. Before packing, every
placeholder expands to as many ``<|image|>`` tokens as that image has merged (pixel-shuffled) tokens
(:func:`expand_image_placeholders`); the embeddings at those positions are the projected image features,
in order (:meth:`VLM.embed`). Several samples then pack into one row like text documents, with
packed-sequence ids keeping them apart, and image positions carry no next-token label.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from mm_lightning.models.llm import LLM, HeadLoss
from mm_lightning.models.projector import Projector
from mm_lightning.models.registry import build_backbone
from mm_lightning.models.vit import ViT, split_grids


class VLM(nn.Module):
    """LLM + ViT + projector.

    Args:
        llm: the language model.
        vit: the vision encoder.
        projector: maps each image's ViT grid to LLM-width tokens.
        image_token_id: id of the ``<|image|>`` token in the LLM's vocabulary.
    """

    def __init__(self, llm: LLM, vit: ViT, projector: Projector, image_token_id: int) -> None:
        super().__init__()
        if projector.config.vision_dim != vit.config.d_model or projector.config.llm_dim != llm.config.d_model:
            raise ValueError(
                f"projector {projector.config.vision_dim} -> {projector.config.llm_dim} does not join "
                f"vit width {vit.config.d_model} to llm width {llm.config.d_model}"
            )
        self.llm, self.vit, self.projector = llm, vit, projector
        self.image_token_id = image_token_id

    def image_tokens(self, patches: Tensor, grid_hw: Tensor, patch_seq_ids: Tensor | None = None) -> Tensor:
        """Projected tokens of all images in order, ``[sum_i n_i, llm_dim]``, from packed patches ``[1, N, 3p²]``.

        On the CPU the ViT and projector run in fp32 even under bf16 autocast (``bf16-auto`` / ``bf16-mixed``): their
        small matmuls gain nothing from bf16 there (the ViT stage: 0.99x) and the casts cost, so only the LLM's matmuls
        run in bf16 (README, "Precision": the demo's joint step ~1.2x faster this way, slower with the whole model in
        bf16). On a GPU autocast covers the whole model.
        """
        with torch.autocast("cpu", enabled=False) if patches.device.type == "cpu" else contextlib.nullcontext():
            features = self.vit(patches, grid_hw, patch_seq_ids)  # [1, N, Dv]
            return torch.cat(self.projector(split_grids(features, grid_hw)))  # [sum n_i, d]

    def embed(self, input_ids: Tensor, patches: Tensor | None = None, grid_hw: Tensor | None = None,
              patch_seq_ids: Tensor | None = None) -> Tensor:  # fmt: skip
        """Token embeddings ``[B, T, d]`` with the image placeholders replaced by projected image tokens.

        Images fill the ``<|image|>`` positions in reading order (row by row, left to right).
        """
        embeds = self.llm.embed(input_ids)  # [B, T, d]
        is_image = input_ids == self.image_token_id  # [B, T]
        n_slots = int(is_image.sum())
        if patches is None:
            if n_slots:
                raise ValueError(f"{n_slots} <|image|> positions but no images were given")
            return embeds
        tokens = self.image_tokens(patches, grid_hw, patch_seq_ids).to(embeds.dtype)
        if tokens.shape[0] != n_slots:
            raise ValueError(f"{n_slots} <|image|> positions for {tokens.shape[0]} image tokens; expand placeholders")
        return embeds.masked_scatter(is_image[..., None], tokens)

    def forward(self, input_ids: Tensor, patches: Tensor | None = None, grid_hw: Tensor | None = None,
                patch_seq_ids: Tensor | None = None, position_ids: Tensor | None = None,
                seq_ids: Tensor | None = None, head_loss: HeadLoss | None = None) -> Any:  # fmt: skip
        """Next-token logits ``[B, T, V]`` of (packed) multimodal rows, or ``head_loss``'s result (see ``LLM.forward``).

        The image tokens are spliced in inside the LLM's ``forward`` (``replace_embeds``), not through
        :meth:`embed`, so that FSDP2 gathers the embedding table with the LLM's own hooks.
        """
        is_image = input_ids == self.image_token_id  # [B, T]
        if patches is None:
            if is_image.any():
                raise ValueError(f"{int(is_image.sum())} <|image|> positions but no images were given")
            return self.llm(input_ids=input_ids, position_ids=position_ids, seq_ids=seq_ids, head_loss=head_loss)
        tokens = self.image_tokens(patches, grid_hw, patch_seq_ids)  # [n, d]
        if tokens.shape[0] != int(is_image.sum()):
            raise ValueError(f"{int(is_image.sum())} <|image|> positions for {tokens.shape[0]} image tokens")
        return self.llm(input_ids=input_ids, position_ids=position_ids, seq_ids=seq_ids,
                        replace_embeds=(is_image, tokens), head_loss=head_loss)  # fmt: skip


def expand_image_placeholders(token_ids: list[int], tokens_per_image: list[int], image_token_id: int) -> list[int]:
    """Repeat the ``k``-th ``<|image|>`` placeholder ``tokens_per_image[k]`` times."""
    n_placeholders = token_ids.count(image_token_id)
    if n_placeholders != len(tokens_per_image):
        raise ValueError(f"{n_placeholders} <|image|> placeholders for {len(tokens_per_image)} images")
    counts = iter(tokens_per_image)
    expanded: list[int] = []
    for token in token_ids:
        expanded.extend([token] * next(counts) if token == image_token_id else [token])
    return expanded


def build_vlm(llm: str = "tiny", vit: str = "tiny", projector: str = "tiny", image_token_id: int = 2) -> VLM:
    """A VLM from registry presets (``image_token_id`` 2 is ``<|image|>`` in the project tokenizer)."""
    return VLM(
        build_backbone("llm", llm), build_backbone("vit", vit), build_backbone("projector", projector), image_token_id
    )
