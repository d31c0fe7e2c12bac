"""What the stages with a whole VLM share (alignment and the joint stages): its three backbones, its view, and
greedy captions of a batch's images for ``predict``."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import FSDPModule

from mm_lightning.errors import ConfigError
from mm_lightning.generation.caption import caption_prompts, packed_image_prompts
from mm_lightning.models.flops import vlm_step_flops
from mm_lightning.models.vlm import VLM
from mm_lightning.stages.base import StageModule
from mm_lightning.tokenizer import IMAGE_ID

PackedImages = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A batch's images: ``patches`` ``[1, N, 3p²]``, ``grid_hw`` ``[n, 2]``, ``patch_seq_ids`` ``[1, N]``."""
CAPTION_TOKENS = 48
"""Most tokens of a predicted caption when the datamodule has no ``max_caption_len``."""


class VisionLanguageStage(StageModule):
    """A stage over ``self.llm``, ``self.vit`` and ``self.projector`` (set by the subclass)."""

    llm: torch.nn.Module
    vit: torch.nn.Module
    projector: torch.nn.Module

    def backbones(self) -> dict[str, torch.nn.Module]:
        return {"llm": self.llm, "vit": self.vit, "projector": self.projector}

    @property
    def vlm(self) -> VLM:
        """The assembled model (a view over this stage's backbones, not a second copy)."""
        return VLM(self.llm, self.vit, self.projector, IMAGE_ID)

    def dummy_image(self) -> PackedImages:
        """One black patch: what a rank without images feeds the vision tower when another rank has some."""
        patch_dim, device = 3 * self.vit.config.patch_size**2, self.device
        return (torch.zeros(1, 1, patch_dim, device=device), torch.ones(1, 2, dtype=torch.long, device=device),
                torch.zeros(1, 1, dtype=torch.long, device=device))  # fmt: skip

    def count_flops(self, llm_tokens: int, seq_len: int, grid_hw: torch.Tensor | None) -> None:
        """Set ``flops_per_batch`` (the throughput monitor's FLOP/s and MFU) for this training step: ``llm_tokens``
        through the LLM, attending over ``seq_len``, and the images of patch grids ``grid_hw`` (``None``: none)."""
        self.flops_per_batch = vlm_step_flops(self.llm, self.vit, self.projector, llm_tokens, seq_len, grid_hw)

    def image_token_counts(self, grid_hw: torch.Tensor) -> list[int]:
        """LLM tokens of each image of a batch (its ``<|image|>`` positions)."""
        return [self.projector.num_tokens(h, w) for h, w in grid_hw.tolist()]

    def caption_batch_images(self, images: PackedImages | None) -> list[str]:
        """Greedy captions of a batch's images (``None``: it has none), decoded with the datamodule's tokenizer.

        On one rank, images whose prompts have one length decode together and stop at the end of document. With
        several ranks every forward pass is a collective (FSDP2): each rank decodes its images one at a time for all
        the tokens, as many images as the rank with the most (repeating one, or a dummy image where it has none), and
        the LLM's own parameters (embedding, head) stay gathered meanwhile: prompts and new tokens are embedded outside
        its forward.
        """
        tokenizer = self.data_tokenizer
        if tokenizer is None:
            raise ConfigError(f"{type(self).__name__} predicts captions with the datamodule's tokenizer; it has none")
        count = 0 if images is None else int(images[1].shape[0])
        ranks = self.trainer.world_size
        most = count if ranks == 1 else int(self.trainer.strategy.reduce(torch.tensor(count, device=self.device),
                                                                         reduce_op="max"))  # fmt: skip
        if most == 0:
            return []
        max_new_tokens = int(getattr(self.trainer.datamodule, "max_caption_len", CAPTION_TOKENS))
        sharded = isinstance(self.llm, FSDPModule)
        if sharded:
            self.llm.unshard()
        try:
            prompts = packed_image_prompts(self.vlm, *(images or self.dummy_image()))
            prompts += prompts[:1] * (most - len(prompts))
            captions = caption_prompts(self.vlm, tokenizer, prompts, max_new_tokens, stop_at_eod=ranks == 1,
                                       batch_size=32 if ranks == 1 else 1)  # fmt: skip
        finally:
            if sharded:
                self.llm.reshard()
        return captions[:count]
