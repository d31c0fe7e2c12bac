"""Copy rows: random token spans said twice, the warm-up that lets a small LLM learn to copy from its context.

Natural text rewards copying too weakly for a 5M-parameter LLM to learn it in the demo's 1-2M tokens: no head learns
to find an earlier occurrence of the current token and predict what followed it (an induction head, Olsson et al.
2022). On rows where a random span comes back after a random gap, copying is the only way to predict the repeat, and
with smeared keys and Muon (``key_smear``; README, "What makes content-matched copying form") the head forms in a few
hundred steps. A short stage on these rows before text pre-training (``configs/text_pretrain/tiny_copy_warmup.yaml``)
gives the text stage a head to keep; the text stage then keeps it with restated rows
(:mod:`~mm_lightning.data.restated_rows`).

Each document is ``[s, g, s, <|endoftext|>]``: a span ``s`` of ``span`` ids drawn uniformly from the tokenizer's
ordinary tokens, ``0..gap`` random ids ``g`` (drawn per document, so the distance to the copy varies and a head
that only looks a fixed distance back cannot solve it), and ``s`` again; with a ``lead``, up to ``lead`` random ids
come before the span, ``[l, s, g, s, <|endoftext|>]``, so the span does not always open its document and decoys can
lie before it as well as after (:class:`CopyRowsDataset`); the lead-in is drawn after the gap and takes only the
room the row leaves, so it never cuts the farthest repeats off a row's end. Documents are packed back to back, the
last one cut at the row's end. Row ``i`` is a pure function of ``(seed, i)``: every rank and a resumed run see the
same rows. The tokenizer is a text corpus's (``tokenizer_from``), so the checkpoint records the vocabulary the text
stage after it reads, and the passkey check can run here too.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.data.location import DataLocation, LocatedTokenizer
from mm_lightning.data.synthetic import ordered_loader
from mm_lightning.errors import ConfigError

SPAN, GAP = 32, 32
"""Default tokens of a span, and most random tokens between it and its repeat."""
TRAIN_ROWS, VAL_ROWS = 1 << 16, 64
"""Default training and validation rows."""
NEAR_SLOT = 4
"""Gap ids each near decoy takes: a random id, two of the span's, and a wrong one."""


def check_copy_rows(span: int, gap: int, seq_len: int, where: str, decoys: int = 0, lead: int = 0,
                    min_gap: int = 0, near_decoys: int = 0) -> None:  # fmt: skip
    """A clear ``ConfigError`` (naming ``where``) for copy rows that cannot hold a span and its repeat."""
    if decoys < 0 or lead < 0:
        raise ConfigError(f"{where} needs decoys >= 0 and lead >= 0, got decoys={decoys}, lead={lead}")
    if near_decoys < 0 or (near_decoys and span < 4):
        raise ConfigError(f"{where} needs near_decoys >= 0, and a span of at least 4 for any (a two-token "
                          f"piece of the span's third or later token), got near_decoys={near_decoys}, "
                          f"span={span}")  # fmt: skip
    if span < 1 or gap < 0 or seq_len < 2 * span + 1:
        raise ConfigError(f"{where} needs span >= 1, gap >= 0 and seq_len >= 2 * span + 1 (a span and its repeat in "
                          f"a row), got span={span}, gap={gap}, seq_len={seq_len}")  # fmt: skip
    if not 0 <= min_gap <= gap or seq_len < 2 * span + min_gap + 1:
        raise ConfigError(f"{where} needs 0 <= min_gap <= gap and seq_len >= 2 * span + min_gap + 1 (a span, the "
                          f"shortest gap and the repeat in a row), got min_gap={min_gap}, gap={gap}, span={span}, "
                          f"seq_len={seq_len}")  # fmt: skip


def copy_rows_dataset(tokenizer: Any, num_rows: int, seq_len: int, span: int, gap: int, seed: int, decoys: int = 0,
                      lead: int = 0, min_gap: int = 0, near_decoys: int = 0) -> CopyRowsDataset:  # fmt: skip
    """Copy rows in ``tokenizer``'s vocabulary: spans of its ordinary ids (never a special token), EOD between."""
    ids = (len(tokenizer_lib.SPECIAL_TOKENS), tokenizer.get_vocab_size())
    eod = tokenizer_lib.eod_id(tokenizer)
    return CopyRowsDataset(num_rows, seq_len, span, gap, ids, eod, seed, decoys, lead, min_gap, near_decoys)


class CopyRowsDataset(Dataset):
    """``num_rows`` rows of ``seq_len + 1`` tokens, each packed with ``[l, s, g, s, EOD]`` documents (``l`` empty
    without a ``lead``).

    With ``decoys``, up to that many pieces of each span are planted in its gap, each one or two of its tokens
    followed by a random id: a head that finds "the last time this token came" lands on a decoy nearer than the span
    and predicts the wrong id, so only a match on the two or three tokens before the one to predict copies right.
    In the gap alone every decoy is nearer than the span, so "the farthest match" is a second way to copy right, and
    a model that takes it misses a near needle behind a far one-token match (the passkey at stage 1's length, README,
    "The copy curriculum in the long demo's hour"). With a ``lead`` the decoys are shared between the lead-in and the
    gap by their lengths, so some lie before the span and only the longer match is right.

    With ``near_decoys``, the gap's last ids hold that many more pieces, two tokens each, just before the repeat
    (:meth:`_plant_near_decoys`): a near two-token match against the far longer one.

    With ``min_gap`` every gap holds at least that many ids, so every repeat lies at least ``span + min_gap`` tokens
    after its span: long rows can train the far look-ups alone while shorter rows train the near ones.
    """

    def __init__(self, num_rows: int, seq_len: int, span: int, gap: int, ids: tuple[int, int], eod_id: int, seed: int,
                 decoys: int = 0, lead: int = 0, min_gap: int = 0, near_decoys: int = 0) -> None:  # fmt: skip
        self.num_rows, self.seq_len, self.span, self.gap, self.lead = num_rows, seq_len, span, gap, lead
        self.min_gap, self.near_decoys = min_gap, near_decoys
        self.ids, self.eod_id, self.seed, self.decoys = ids, eod_id, seed, decoys

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> Tensor:
        return self.row(index)[0]  # [T + 1]

    def row(self, index: int) -> tuple[Tensor, Tensor]:
        """Row ``index`` (``[T + 1]`` ids) and which of its tokens a copy can predict (``[T + 1]`` bools).

        The predictable ones are each repeat's tokens after its first (that one follows a random gap id); the rest
        are random ids no model can predict, so a loss on them alone teaches nothing but the ids' uniform prior.
        """
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        low, high = self.ids
        documents, masks, length = [], [], 0
        while length < self.seq_len + 1:
            if self.lead:  # the gap first, then a lead-in that fits before it: the farthest repeats stay in the row
                gap = self._random_ids(self.gap, generator, self.min_gap)
                room = self.seq_len + 1 - length - 2 * self.span - len(gap) - 1
                lead = self._random_ids(min(self.lead, max(0, room)), generator)
                span = torch.randint(low, high, (self.span,), generator=generator)
            else:
                lead = torch.zeros(0, dtype=torch.long)
                span = torch.randint(low, high, (self.span,), generator=generator)
                gap = self._random_ids(self.gap, generator, self.min_gap)
            tail = NEAR_SLOT * self.near_decoys
            tail *= len(gap) >= tail  # a gap too short for every slot gets no near decoys
            body = gap[: len(gap) - tail]  # a view: the spread decoys go here, the near ones after it
            if self.decoys:
                in_lead = round(self.decoys * len(lead) / max(1, len(lead) + len(body)))
                self._plant_decoys(span, lead, in_lead, generator)
                self._plant_decoys(span, body, self.decoys - in_lead, generator)
            if tail:
                self._plant_near_decoys(span, gap[len(gap) - tail :], generator)
            documents.append(torch.cat([lead, span, gap, span, torch.tensor([self.eod_id])]))
            mask = torch.zeros(len(documents[-1]), dtype=torch.bool)
            mask[len(lead) + len(span) + len(gap) + 1 : -1] = True
            masks.append(mask)
            length += len(documents[-1])
        return torch.cat(documents)[: self.seq_len + 1], torch.cat(masks)[: self.seq_len + 1]

    def _random_ids(self, most: int, generator: torch.Generator, least: int = 0) -> Tensor:
        """``least..most`` random ordinary ids (the count drawn uniformly)."""
        count = int(torch.randint(least, most + 1, (1,), generator=generator))
        return torch.randint(self.ids[0], self.ids[1], (count,), generator=generator)

    def _plant_near_decoys(self, span: Tensor, tail: Tensor, generator: torch.Generator) -> None:
        """Fill ``tail`` (the gap's last ``NEAR_SLOT * near_decoys`` ids) with two-token pieces of the span.

        Each slot is ``[r, span[k - 1], span[k], wrong]`` (``r`` the random id already there, ``2 <= k <= span - 2``),
        a few tokens before the repeat reaches ``span[k]``: the two-token match is near and copies the wrong id, the
        right one is three or more tokens long and ``span + gap`` back, as a passkey question that names the needle's
        last word just before asking (README, "Near decoys in stage 5's copy rows").
        """
        for first in range(0, len(tail), NEAR_SLOT):
            end = int(torch.randint(2, len(span) - 1, (1,), generator=generator))
            wrong = self._wrong_after(span, end, generator)
            tail[first + 1 : first + NEAR_SLOT] = torch.cat([span[end - 1 : end + 1], torch.tensor([wrong])])

    def _wrong_after(self, span: Tensor, end: int, generator: torch.Generator) -> int:
        """A random ordinary id that is not ``span[end + 1]``: what a decoy piece ending at ``span[end]`` copies."""
        wrong = int(torch.randint(self.ids[0], self.ids[1] - 1, (1,), generator=generator))
        return wrong + int(wrong >= span[end + 1])

    def _plant_decoys(self, span: Tensor, gap: Tensor, decoys: int, generator: torch.Generator) -> None:
        """Write ``decoys`` pieces ``span[i - m + 1 : i + 1]`` (``m`` 1 or 2), each then a random id, into ``gap``.

        The gap is cut into ``decoys`` equal slots and each piece goes in its own, so pieces never overlap (two
        could otherwise join into a longer right run); a slot too short for its piece gets none. The id after a piece
        is what a one- or two-token match would copy: never ``span[i + 1]``, the right one.
        """
        if decoys < 1:
            return
        slot = len(gap) // decoys
        for first in range(0, slot * decoys, max(slot, 1)):
            piece = int(torch.randint(1, 3, (1,), generator=generator))
            if slot < piece + 1 or len(span) < piece + 1:
                continue
            end = int(torch.randint(piece - 1, len(span) - 1, (1,), generator=generator))  # the piece's last index
            at = first + int(torch.randint(0, slot - piece, (1,), generator=generator))
            wrong = self._wrong_after(span, end, generator)
            gap[at : at + piece + 1] = torch.cat([span[end - piece + 1 : end + 1], torch.tensor([wrong])])


class CopyRowsDataModule(LocatedTokenizer, pl.LightningDataModule):
    """Copy rows in the batch layout of :class:`~mm_lightning.data.TextDataModule`, with a text corpus's tokenizer.

    Args:
        tokenizer_from: the text corpus whose tokenizer gives the vocabulary (a demo name such as
            ``"demo:sotu-captions"``, built on first use, or a prepared folder).
        seq_len: tokens per row.
        batch_size: rows per batch (per process).
        span: tokens of each span said twice.
        gap: most random tokens between a span and its repeat.
        decoys: pieces of each span planted in its gap (:class:`CopyRowsDataset`), so that copying must match the
            two or three tokens before the one to predict, not one.
        num_rows: training rows (validation has ``val_rows``, other seeds); row ``i`` depends on ``(seed, i)`` only.
        val_rows: validation rows.
        seed: base seed.
    """

    def __init__(self, tokenizer_from: str = "demo:sotu-captions", seq_len: int = 256, batch_size: int = 8,
                 span: int = SPAN, gap: int = GAP, decoys: int = 0, num_rows: int = TRAIN_ROWS,
                 val_rows: int = VAL_ROWS, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        check_copy_rows(span, gap, seq_len, "CopyRowsDataModule", decoys)
        if min(num_rows, val_rows, batch_size) < 1:
            raise ConfigError(f"CopyRowsDataModule needs at least one row and batch, got num_rows={num_rows}, "
                              f"val_rows={val_rows}, batch_size={batch_size}")  # fmt: skip
        self.save_hyperparameters()
        self.location = DataLocation(tokenizer_from, "text", None, None)
        self.seq_len, self.batch_size, self.span, self.gap, self.decoys = seq_len, batch_size, span, gap, decoys
        self.num_rows, self.val_rows, self.seed = num_rows, val_rows, seed

    def setup(self, stage: str | None = None) -> None:
        """The rows: spans of the tokenizer's ordinary ids (its special tokens never appear in a span)."""
        shape = (self.seq_len, self.span, self.gap)
        self.train_set = copy_rows_dataset(self.tokenizer, self.num_rows, *shape, self.seed, self.decoys)
        self.val_set = copy_rows_dataset(self.tokenizer, self.val_rows, *shape, self.seed + 1, self.decoys)

    def train_dataloader(self) -> DataLoader:
        return ordered_loader(self.train_set, self.batch_size, self.trainer, tokenizer_lib.eod_id(self.tokenizer),
                              drop_last=True)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return ordered_loader(self.val_set, self.batch_size, self.trainer, tokenizer_lib.eod_id(self.tokenizer),
                              drop_last=False)  # fmt: skip
