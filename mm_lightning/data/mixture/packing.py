"""Packing mixed samples (text, images with their token counts) into fixed-length rows, NaViT / Kimi-VL style.

Each image's single ``<|image|>`` placeholder expands to the projector's token count for its patch grid
(``ceil(h / merge) * ceil(w / merge)``, :meth:`~mm_lightning.models.projector.Projector.num_tokens`). A sample of
``n`` ids then occupies ``n - 1`` positions, inputs ``ids[:-1]`` and targets ``ids[1:]`` as in the text stage, and
samples are placed first-fit into rows of ``seq_len`` positions. Within a row every sample is its own packed
sequence, and an EOD input ends a document inside a sample too (text blocks hold several documents), so attention
and positions restart there (:mod:`mm_lightning.ops.packing`), unless the sample is one sequence throughout
(``MixSample.eod_ends_document`` False: a conversation, whose assistant turns each end with EOD). Images are listed in
the reading order of their placeholders across the whole batch, the order :meth:`~mm_lightning.models.vlm.VLM.embed`
fills them in. A ``filler`` (:mod:`~mm_lightning.data.mixture.filler`) then fills the room left at the end of each row
with text pieces, each a document of its own cut at the row end; without one the room is padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import count

import torch
from torch import Tensor

from mm_lightning.errors import ConfigError
from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.media.interleave import MixSample
from mm_lightning.ops.packing import position_ids_from_seq_ids
from mm_lightning.ops.patches import pack_patches
from mm_lightning.tokenizer import EOD_ID, IMAGE_ID, PAD_ID

Filler = Callable[[int, int], MixSample | None]
"""``(row, piece) -> MixSample | None``: the text pieces that fill a row's gap, in order."""


def tokens_per_image(grid: tuple[int, int], merge_factor: int) -> int:
    """LLM tokens of an image with an ``(h, w)`` patch grid after ``merge x merge`` pixel shuffle."""
    return math.ceil(grid[0] / merge_factor) * math.ceil(grid[1] / merge_factor)


def expand_sample(sample: MixSample, merge_factor: int) -> tuple[list[int], list[bool]]:
    """A sample's ids with each placeholder repeated to its image's token count, and the per-id loss mask.

    Image tokens never carry a loss (they are inputs, not predictions), whatever ``loss_mask`` says.
    """
    mask = sample.loss_mask if sample.loss_mask is not None else [True] * len(sample.token_ids)
    placeholders = sample.token_ids.count(IMAGE_ID)
    if placeholders != len(sample.images) or len(mask) != len(sample.token_ids):
        raise ValueError(
            f"sample from {sample.source!r}: {placeholders} <|image|> placeholders for {len(sample.images)} images, "
            f"{len(mask)} loss-mask entries for {len(sample.token_ids)} ids"
        )
    counts = iter(tokens_per_image(grid, merge_factor) for _, grid in sample.images)
    ids: list[int] = []
    loss: list[bool] = []
    for token, keep in zip(sample.token_ids, mask):
        repeat = next(counts) if token == IMAGE_ID else 1
        ids.extend([token] * repeat)
        loss.extend([keep and token != IMAGE_ID] * repeat)
    return ids, loss


def fit_to_row(ids: list[int], loss: list[bool], seq_len: int, label: str) -> tuple[list[int], list[bool], int]:
    """Truncate a sample to at most ``seq_len`` positions (``seq_len + 1`` ids); returns the tokens dropped.

    Text may be cut; a cut that would drop image tokens raises a :class:`ConfigError` naming the sample and sizes.
    """
    positions = len(ids) - 1
    if positions <= seq_len:
        return ids, loss, 0
    image_positions = [p for p, token in enumerate(ids) if token == IMAGE_ID]
    if image_positions and image_positions[-1] >= seq_len:
        raise ConfigError(
            f"{label} needs {positions} positions ({len(image_positions)} of them image tokens, the last at "
            f"{image_positions[-1]}) but rows hold seq_len={seq_len}; raise seq_len or lower max_patches"
        )
    return ids[: seq_len + 1], loss[: seq_len + 1], positions - seq_len


def first_fit(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Sample indices per row: each sample goes to the first row with room for it, else to a new row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index, length in enumerate(lengths):
        row = next((r for r, room in enumerate(free) if room >= length), None)
        if row is None:
            rows.append([])
            free.append(seq_len)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= length
    return rows


def pack_samples(samples: list[MixSample], seq_len: int, merge_factor: int = 2, rows_per_batch: int | None = None,
                 labels: list[str] | None = None, filler: Filler | None = None,
                 ) -> dict[str, Tensor | None]:  # fmt: skip
    """Pack samples first-fit into rows of ``seq_len`` positions, then fill each row's gap with text from ``filler``.

    Args:
        samples: the batch's samples, in order.
        seq_len: positions per row ``L``.
        merge_factor: side of the pixel-shuffle block (the projector's ``shuffle_factor``).
        rows_per_batch: a fixed row count ``R`` (padding rows added); ``None``: as many rows as first-fit needs.
        labels: how errors name each sample (default ``sample <j> from '<source>'``).
        filler: ``(row, piece) -> MixSample | None``, the text pieces of a row's gap in order (``None``: no more),
            each cut to the room left and placed as a document of its own (:mod:`~mm_lightning.data.mixture.filler`);
            ``None``: gaps stay padding.

    Returns:
        ``input_ids``, ``labels``, ``seq_ids``, ``position_ids`` ``[R, L]`` int64 (pad id 1, labels
        ``IGNORE_INDEX`` on image targets, masked targets and padding); ``patches`` ``[1, N, 3p²]``, ``grid_hw``
        ``[n_images, 2]``, ``patch_seq_ids`` ``[1, N]`` (images in placeholder reading order; ``None`` without
        images); ``sample_tokens`` and ``sample_truncated`` ``[S]``: positions each sample occupies and tokens cut;
        ``filler_tokens`` ``[R]``: filler positions of each row.
    """
    if not samples:
        raise ValueError("cannot pack an empty list of samples")
    labels = labels or [f"sample {j} from {s.source!r}" for j, s in enumerate(samples)]
    fitted = [fit_to_row(*expand_sample(s, merge_factor), seq_len, label) for s, label in zip(samples, labels)]
    lengths = [len(ids) - 1 for ids, _, _ in fitted]
    rows = first_fit(lengths, seq_len)
    if rows_per_batch is not None:
        if len(rows) > rows_per_batch:
            raise ConfigError(
                f"{len(samples)} samples ({sum(lengths)} positions) need {len(rows)} rows of seq_len={seq_len}, more "
                f"than rows_per_batch={rows_per_batch}; lower samples_per_batch or raise rows_per_batch"
            )
        rows += [[] for _ in range(rows_per_batch - len(rows))]
    input_ids = torch.full((len(rows), seq_len), PAD_ID, dtype=torch.long)  # [R, L]
    targets = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)  # [R, L]
    seq_ids = torch.zeros((len(rows), seq_len), dtype=torch.long)  # [R, L]
    filler_tokens = torch.zeros(len(rows), dtype=torch.long)  # [R]
    images: list[tuple[Tensor, tuple[int, int]]] = []
    for r, members in enumerate(rows):
        cursor, next_id = 0, 0
        for j in members:
            ids, loss, _ = fitted[j]
            cursor, next_id = _place(input_ids[r], targets[r], seq_ids[r], cursor, next_id, ids, loss,
                                     samples[j].eod_ends_document)  # fmt: skip
            images.extend(samples[j].images)
        start = cursor
        for ids, loss, piece in gap_pieces(seq_len - cursor, r, filler) if filler is not None else ():
            cursor, next_id = _place(input_ids[r], targets[r], seq_ids[r], cursor, next_id, ids, loss,
                                     piece.eod_ends_document)  # fmt: skip
        filler_tokens[r] = cursor - start
        seq_ids[r, cursor:] = next_id  # padding: one sequence of its own
    batch: dict[str, Tensor | None] = {
        "input_ids": input_ids,
        "labels": targets,
        "seq_ids": seq_ids,
        "position_ids": position_ids_from_seq_ids(seq_ids),
        "patches": None,
        "grid_hw": None,
        "patch_seq_ids": None,
        "sample_tokens": torch.tensor(lengths, dtype=torch.long),
        "sample_truncated": torch.tensor([cut for _, _, cut in fitted], dtype=torch.long),
        "filler_tokens": filler_tokens,
    }
    if images:
        packed = pack_patches([patches for patches, _ in images], [grid for _, grid in images])
        batch.update(patches=packed["patches"], grid_hw=packed["grid_hw"], patch_seq_ids=packed["seq_ids"])
    return batch


def gap_pieces(room: int, row: int, filler: Filler) -> list[tuple[list[int], list[bool], MixSample]]:
    """The filler pieces of a gap of ``room`` positions in row ``row``: ``(ids, loss, sample)``, each cut to the room
    still open, until the gap is full or ``filler`` has no more. A piece with an image raises (filler is text)."""
    pieces = []
    for index in count():
        sample = filler(row, index) if room > 0 else None
        if sample is None:
            return pieces
        if sample.images or IMAGE_ID in sample.token_ids:
            raise ValueError(f"filler piece {index} of row {row} from {sample.source!r} has images; filler is text")
        ids, loss = expand_sample(sample, 1)
        ids, loss = ids[: room + 1], loss[: room + 1]
        if len(ids) >= 2:
            pieces.append((ids, loss, sample))
            room -= len(ids) - 1
    return pieces


def _place(input_ids: Tensor, targets: Tensor, seq_ids: Tensor, cursor: int, next_id: int, ids: list[int],
           loss: list[bool], eod_ends_document: bool) -> tuple[int, int]:  # fmt: skip
    """Write one sequence of ``ids`` (inputs ``ids[:-1]``, targets ``ids[1:]``) into a row ``[L]`` at ``cursor`` as
    packed sequence ``next_id`` (and the ones after, one per EOD input); returns the new cursor and next free id."""
    n = len(ids) - 1
    inputs = torch.tensor(ids[:-1], dtype=torch.long)  # [n]
    wanted = torch.tensor(loss[1:], dtype=torch.bool)  # [n]
    input_ids[cursor : cursor + n] = inputs
    targets[cursor : cursor + n] = torch.tensor(ids[1:], dtype=torch.long).masked_fill(~wanted, IGNORE_INDEX)
    is_eod = (inputs == EOD_ID).long()  # a document ends at its EOD; the next token opens another
    is_eod = is_eod if eod_ends_document else torch.zeros_like(is_eod)
    seq_ids[cursor : cursor + n] = next_id + torch.cumsum(is_eod, 0) - is_eod
    return cursor + n, int(seq_ids[cursor + n - 1]) + 1 if n else next_id


def mixture_stats(batch: dict) -> dict[str, float]:
    """The multimodal share of a batch's samples, in samples and in their tokens (positions occupied), and the gap
    filler's positions, for logging.

    The shares count the samples the plan drew (what the share schedule governs); filler text is not a sample and is
    reported apart: ``mix/filler_tokens`` and ``mix/filler_share`` (filler among all non-padding positions).
    """
    multimodal = batch["sample_multimodal"].float()  # [S]
    tokens = batch["sample_tokens"].float()  # [S]
    filler = float(batch["filler_tokens"].sum()) if batch.get("filler_tokens") is not None else 0.0
    return {
        "mix/multimodal_share_samples": float(multimodal.mean()),
        "mix/multimodal_share_tokens": float((multimodal * tokens).sum() / tokens.sum().clamp(min=1)),
        "mix/truncated_tokens": float(batch["sample_truncated"].sum()),
        "mix/filler_tokens": filler,
        "mix/filler_share": filler / max(1.0, float(tokens.sum()) + filler),
    }
