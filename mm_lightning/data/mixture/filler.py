"""Gap filling: pieces of training text in the room first-fit packing leaves at the end of a row.

A joint-stage batch is a fixed number of samples and no sample is cut, so the last row of a batch (and sometimes
another) ends in a gap: in the demo's long-context stage, 8 samples in about 3 rows of 1,024 positions leave ~16% of
the positions as padding. Text pre-training packs documents back to back and cuts the last one at the row end;
:class:`GapFiller` does the same for that gap, with the stage's own *training* text sources: each piece is the start
of a text block or document of one of them, cut where the row ends. An image or a caption is never cut (the filler is
text only, placed after the row's samples), and padding remains only where no piece is left (``max_pieces``).

A piece is a document of its own in the row: a new ``seq_id`` (attention stays inside it, positions restart at 0),
an EOD inside it ending a document as between the documents of any text block, and its targets carry the loss as
text targets do.

Piece ``m`` of the gap of row ``r`` of global batch ``g`` (batch ``b`` of rank ``q`` of ``W`` is ``g = b * W + q``, the
batch whose samples the plan gives) is a pure function of ``(seed, g, r, m)``: its counter ``c = (g * max_rows + r) *
max_pieces + m`` picks a source by a seeded hash weighted as the sources are, and the item at ``c``'s place in that
source's epoch, read through a seeded permutation of its own (the filler's order is not the samples' order). Workers,
ranks and a resumed run thus agree with no state to save, and the same samples get the same filler for any number of
ranks. Filler is not a sample: the plan's share schedule counts samples drawn and is unchanged, and the ``sample_*``
keys of a batch describe its samples only; ``filler_tokens`` ``[R]`` counts each row's filler positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from mm_lightning.data.mixture.plan import MixtureSource, permute_index, stable_hash
from mm_lightning.errors import ConfigError
from mm_lightning.media.interleave import MixSample


@dataclass(frozen=True)
class GapFiller:
    """Text pieces for the row gaps of a stream of packed batches, a pure function of the seed and the position."""

    sources: tuple[MixtureSource, ...]
    """The text sources of the training split (never validation sources)."""
    weights: tuple[float, ...]
    """Relative weights of the sources (> 0)."""
    seed: int
    """The mixture seed."""
    max_rows: int
    """An upper bound on the rows of a batch (the counters of different batches never overlap)."""
    max_pieces: int = 8
    """Pieces at most per gap (a gap still open after them stays padding)."""

    def __post_init__(self) -> None:
        if not self.sources or len(self.sources) != len(self.weights):
            raise ValueError("a gap filler needs one weight per text source, and at least one source")
        if any(source.multimodal for source in self.sources):
            raise ConfigError(f"gap filler sources must be text: {[s.name for s in self.sources if s.multimodal]}")
        if not all(w > 0 for w in self.weights) or self.max_rows < 1 or self.max_pieces < 1:
            raise ConfigError(f"gap filler: weights {self.weights} must be > 0, max_rows and max_pieces >= 1")

    def counter(self, batch: int, row: int, piece: int) -> int:
        """The counter of piece ``piece`` of row ``row``'s gap in global batch ``batch``."""
        if not (0 <= row < self.max_rows and 0 <= piece < self.max_pieces and batch >= 0):
            raise ValueError(f"filler piece {piece} of row {row} in batch {batch} is outside the filler's bounds")
        return (batch * self.max_rows + row) * self.max_pieces + piece

    def piece(self, batch: int, row: int, piece: int) -> MixSample | None:
        """Text piece ``piece`` for row ``row``'s gap in global batch ``batch``; ``None`` past ``max_pieces``."""
        if piece >= self.max_pieces:
            return None
        counter = self.counter(batch, row, piece)
        source = self.sources[self.choose_source(counter)]
        n = len(source)
        epoch, position = divmod(counter, n)
        item = permute_index(position, n, stable_hash(self.seed, "filler", source.name, epoch))
        return source.sample(epoch * n + item)

    def choose_source(self, counter: int) -> int:
        """The source of a counter: a seeded uniform draw against the cumulative weights."""
        draw = stable_hash(self.seed, "filler-source", counter) / 2**64 * sum(self.weights)
        for index, weight in enumerate(self.weights):
            draw -= weight
            if draw < 0:
                return index
        return len(self.weights) - 1
