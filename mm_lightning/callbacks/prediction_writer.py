"""``PredictionWriter``: what ``mm-lightning predict`` returns, written as JSON Lines a user can read.

Every stage's ``predict_step`` returns a list of JSON-ready records (:mod:`mm_lightning.eval.predictions`): per
document its loss and perplexity (text stage), per image its embeddings (ViT stage), greedy captions (alignment and
joint stages). The writer adds the batch index to each and writes one JSON object a line, whole or not at all, to
``predictions.jsonl`` in the run's log folder (``runs/<name>/version_<n>/predict/`` with the stage configs'
logger), and prints the path. With several ranks each rank writes its own file (``predictions.rank<r>.jsonl``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from mm_lightning.atomic_io import write_with

# the records carry what identifies them; the sample indices Lightning would add are not needed (nor known for litdata)
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")


class PredictionWriter(BasePredictionWriter):
    """Write each predict batch's records as JSON Lines (nothing in ``fit``, ``validate`` or ``test``).

    Args:
        path: the file to write; default ``predictions.jsonl`` in the trainer's log folder.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.written: Path | None = None
        """The file the last ``predict`` wrote."""
        self._lines: list[str] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._lines = []
        path = Path(self.path) if self.path else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        self.written = path.resolve()

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:  # fmt: skip
        self._lines += [json.dumps({"batch": batch_idx, **record}) + "\n" for record in prediction]

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_with(self.written, lambda f: f.write("".join(self._lines).encode("utf-8")))
        # every rank says it: one write with its newline, so that ranks sharing a pipe (unbuffered, print() writes the
        # text and the newline apart) never splice their lines together
        sys.stdout.write(f"mm-lightning predict: wrote {len(self._lines)} predictions to {self.written}\n")
        sys.stdout.flush()
        self._lines = []
