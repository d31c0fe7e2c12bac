"""Held-out text perplexity of an LLM on one fixed set of rows: the whole ``val`` split of a text corpus.

Every stage validates on its own data, batching and share, so their ``val`` curves do not compare across stages;
this scores checkpoints of different stages on the same rows, which is how "joint training keeps the language
ability" is measured (``mm-lightning evaluate``).
"""

from __future__ import annotations

import math

import torch

from mm_lightning.data.text import TextDataModule
from mm_lightning.losses.next_token import IGNORE_INDEX


@torch.no_grad()
def heldout_perplexity(llm: torch.nn.Module, data_path: str, seq_len: int = 256, batch_size: int = 8) -> dict:
    """Mean next-token loss and perplexity of ``llm`` over every row of ``data_path``'s val split."""
    data = TextDataModule(data_path, seq_len=seq_len, batch_size=batch_size, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    total, count = 0.0, 0
    for batch in data.val_dataloader():
        logits = llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], seq_ids=batch["seq_ids"])
        labels = batch["labels"]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((labels != IGNORE_INDEX).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": math.exp(mean), "tokens": count}
