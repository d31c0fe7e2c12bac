"""Micro mixture sources for the joint-stage tests: ``pattern_text`` and ``pattern_image``, and a mixture of both.

Importing this module registers the two source kinds (once, so a re-import is harmless).
"""

import torch

from mm_lightning.data.mixture.plan import epoch_item
from mm_lightning.data.mixture.sources import register_source, source_kind
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.media.interleave import MixSample
from mm_lightning.tokenizer import IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID


class PatternSource:
    """Micro samples: text tokens 5..63, or a small image (8-pixel patches, like ``colour_task.VIT``) and a caption."""

    def __init__(self, name: str, multimodal: bool) -> None:
        self.name, self.multimodal = name, multimodal

    def __len__(self) -> int:
        return 29

    def sample(self, k: int) -> MixSample:
        item = epoch_item(k, 29, 0, self.name)
        text = [5 + (item * 7 + j) % 59 for j in range(6 + item % 5)]
        if not self.multimodal:
            return MixSample(text + [0], source=self.name)
        grid = (1 + item % 2, 1 + item % 3)
        patches = torch.rand(grid[0] * grid[1], 3 * 8 * 8, generator=torch.Generator().manual_seed(item))
        ids = [IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID, *text, 0]
        return MixSample(ids, [(patches, grid)], [False] * 3 + [True] * (len(text) + 1), self.name)


for _kind, _flag in (("pattern_text", False), ("pattern_image", True)):
    try:
        source_kind(_kind)
    except ConfigError:
        register_source(_kind, multimodal=_flag)(lambda spec, ctx, _f=_flag: PatternSource(spec.name, _f))

SOURCES = [
    {"name": "prose", "kind": "pattern_text", "path": "-"},
    {"name": "pics", "kind": "pattern_image", "path": "-"},
]


def mixture(share: float | None = None, **kwargs) -> MixtureDataModule:
    share_schedule = None if share is None else {"start": share, "end": share, "ramp_samples": 1, "shape": "constant"}
    options = dict(seq_len=48, samples_per_batch=4, patch_size=8, max_patches=32, seed=0, val_batches=1)
    return MixtureDataModule(SOURCES, share_schedule, **{**options, **kwargs})
