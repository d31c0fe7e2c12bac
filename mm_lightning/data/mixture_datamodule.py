"""The datamodule of the joint stages: named sources mixed on a multimodal-share schedule, packed into rows.

Sample ``i`` of a stage is chosen by :class:`~mm_lightning.data.mixture.plan.MixturePlan` (a pure function of the seed
and ``i``). At global step ``s`` of the stage, rank ``r`` of ``W`` gets samples ``(s * W + r) * samples_per_batch
+ j`` for ``j < samples_per_batch``, so the schedule runs over the stage's samples for any ``W``. Each batch is a
pure function of its index, streamed by an ``IterableDataset`` whose worker ``w`` of ``n`` builds batches
``w, w + n, ...``: the loader's round-robin returns them in order for any ``num_workers``, and Lightning injects
no distributed sampler into it. Resuming starts at the batch of the trainer's global step within the stage (the
stage's first global step is kept in :meth:`MixtureDataModule.state_dict`), so a resumed run yields exactly the
batches an uninterrupted one yields from there.

The number of rows ``R`` of a batch is what first-fit packing needs and varies from batch to batch, unless
``rows_per_batch`` fixes it (then a batch that does not fit raises). In training, the room the samples leave at the
end of a row is filled with pieces of the training text sources (``fill_gaps``,
:mod:`~mm_lightning.data.mixture.filler`: a pure function of the seed and the global batch, so resume, workers and
ranks are as above); filler is not a sample, and the share schedule counts samples only. Validation batches are
packed as they were, without filler. ``test`` and ``predict`` read the validation loaders (the sources' ``val``
splits, ``val_batches`` per rank on every rank).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mm_lightning.data.mixture.filler import GapFiller
from mm_lightning.data.mixture.packing import pack_samples
from mm_lightning.data.mixture.plan import MixturePlan, MixtureSource, ShareSchedule, constant_share
from mm_lightning.data.mixture.sources import SourceContext, SourceSpec, build_source, source_kind
from mm_lightning.demo.corpora import is_demo_name
from mm_lightning.errors import ConfigError


class MixtureBatches(IterableDataset):
    """Packed batches ``first_batch, first_batch + 1, ...`` (up to ``stop_batch``) of one rank.

    Args:
        plan: the source of every sample index.
        sources: the sources, in the plan's order.
        samples_per_batch: samples per batch and rank.
        seq_len: positions per row.
        merge_factor: pixel-shuffle side (image token counts).
        rows_per_batch: fixed rows per batch, or ``None``.
        rank: this rank; ``world_size``: the number of ranks.
        first_batch: the first batch index (per rank) to yield.
        stop_batch: the batch index to stop before; ``None``: never stop.
        filler: text pieces for the rows' gaps (keyed by the global batch index); ``None``: gaps stay padding.
    """

    def __init__(self, plan: MixturePlan, sources: list[MixtureSource], samples_per_batch: int, seq_len: int,
                 merge_factor: int, rows_per_batch: int | None, rank: int, world_size: int, first_batch: int = 0,
                 stop_batch: int | None = None, filler: GapFiller | None = None) -> None:  # fmt: skip
        super().__init__()
        self.plan, self.sources, self.samples_per_batch = plan, sources, samples_per_batch
        self.seq_len, self.merge_factor, self.rows_per_batch = seq_len, merge_factor, rows_per_batch
        self.rank, self.world_size, self.first_batch, self.stop_batch = rank, world_size, first_batch, stop_batch
        self.filler = filler

    def global_batch(self, batch: int) -> int:
        """The index of batch ``batch`` of this rank among all ranks' batches (its samples are the plan's
        ``[g * samples_per_batch, (g + 1) * samples_per_batch)``)."""
        return batch * self.world_size + self.rank

    def sample_indices(self, batch: int) -> range:
        """The global sample indices of batch ``batch`` of this rank."""
        base = self.global_batch(batch) * self.samples_per_batch
        return range(base, base + self.samples_per_batch)

    def batch(self, batch: int) -> dict[str, Any]:
        """Packed batch ``batch`` of this rank (see :func:`~mm_lightning.data.mixture.packing.pack_samples`), plus
        ``sample_index``, ``sample_multimodal`` and ``sample_source`` (position in the source list), each ``[S]``."""
        picks = [self.plan.pick(i) for i in self.sample_indices(batch)]
        samples = [self.sources[p.source].sample(p.k) for p in picks]
        labels = [f"sample {p.index} (item {p.k} of source {self.plan.names[p.source]!r})" for p in picks]
        filler = None if self.filler is None else partial(self.filler.piece, self.global_batch(batch))
        packed = pack_samples(samples, self.seq_len, self.merge_factor, self.rows_per_batch, labels, filler)
        packed["sample_index"] = torch.tensor([p.index for p in picks], dtype=torch.long)
        packed["sample_multimodal"] = torch.tensor([p.multimodal for p in picks], dtype=torch.bool)
        packed["sample_source"] = torch.tensor([p.source for p in picks], dtype=torch.long)
        return packed

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = self.first_batch + worker
        while self.stop_batch is None or batch < self.stop_batch:
            yield self.batch(batch)
            batch += workers

    def __len__(self) -> int:
        if self.stop_batch is None:
            raise TypeError("an endless MixtureBatches has no length")
        return max(0, self.stop_batch - self.first_batch)


class MixtureDataModule(L.LightningDataModule):
    """Text and multimodal sources mixed on a share schedule, packed into rows (the Kimi-VL joint stages).

    Args:
        sources: source specs, e.g. ``[{name: text, kind: text, path: demo:sotu-captions, weight: 1.0},
            {name: captions, kind: image_text, path: demo:emoji-scenes}]`` (extra keys are the kind's options).
        share: the multimodal share of samples over the stage; ``None``: constant, the multimodal sources' share
            of the total weight. A callback may replace it with :meth:`set_share_schedule`.
        seq_len: positions per packed row ``L``.
        samples_per_batch: samples per batch and rank, packed into as many rows as they need.
        patch_size: patch side in pixels.
        max_patches: cap on patches per image.
        merge_factor: the projector's pixel-shuffle side (an ``h x w`` grid becomes ``ceil(h/m) * ceil(w/m)`` tokens).
        seed: the seed of the source choice and of every source's item order.
        num_workers: dataloader worker processes (the batches do not depend on it).
        val_sources: source specs of validation (default: ``sources``), read from their ``val`` splits.
        val_batches: validation batches per rank, the same ones every time.
        rows_per_batch: fix the rows per batch (padding rows added; a batch needing more raises); ``None``: vary.
        start_step: start training at this optimizer step of the stage instead of the trainer's (each step is
            ``accumulate_grad_batches`` batches).
        train_batches: batches per rank in the stage (the loader's length); ``None``: endless (use ``max_steps`` and
            an integer ``val_check_interval``).
        cache_dir: where litdata caches chunks of remote sources.
        fill_gaps: fill the room the samples leave at the end of each training row with pieces of the training text
            sources (weighted as the sources; :mod:`~mm_lightning.data.mixture.filler`); off, or without a text
            source, that room is padding. Validation is never filled.
    """

    def __init__(
        self,
        sources: list[dict[str, Any]],
        share: ShareSchedule | None = None,
        seq_len: int = 256,
        samples_per_batch: int = 8,
        patch_size: int = 14,
        max_patches: int = 256,
        merge_factor: int = 2,
        seed: int = 42,
        num_workers: int = 0,
        val_sources: list[dict[str, Any]] | None = None,
        val_batches: int = 4,
        rows_per_batch: int | None = None,
        start_step: int | None = None,
        train_batches: int | None = None,
        cache_dir: str | None = None,
        fill_gaps: bool = True,
    ) -> None:
        super().__init__()
        self.specs = _parse_specs(sources, "sources")
        self.val_specs = self.specs if val_sources is None else _parse_specs(val_sources, "val_sources")
        for name, value, low in (("seq_len", seq_len, 2), ("samples_per_batch", samples_per_batch, 1),
                                 ("merge_factor", merge_factor, 1), ("val_batches", val_batches, 0)):  # fmt: skip
            if value < low:
                raise ConfigError(f"{name}={value} must be at least {low}")
        self.seq_len, self.samples_per_batch, self.patch_size = seq_len, samples_per_batch, patch_size
        self.max_patches, self.merge_factor, self.seed, self.num_workers = max_patches, merge_factor, seed, num_workers
        self.val_batches, self.rows_per_batch, self.start_step = val_batches, rows_per_batch, start_step
        self.train_batches, self.cache_dir, self.fill_gaps = train_batches, cache_dir, fill_gaps
        self.stage_start_step: int | None = None
        self.share = self._check_share(share)
        self._sources: dict[tuple[str, int], list[MixtureSource]] = {}

    # -- the knobs callbacks turn ------------------------------------------------------------------------------------

    def set_share_schedule(self, schedule: ShareSchedule | dict | None) -> None:
        """Replace the multimodal share schedule (before the dataloaders are built); ``None``: the weights' share."""
        self.share = self._check_share(schedule)

    def set_seq_len(self, seq_len: int) -> None:
        """Positions per row from now on (text blocks follow unless a source fixes ``text_len``)."""
        if seq_len < 2:
            raise ConfigError(f"seq_len={seq_len} must be at least 2")
        self.seq_len = seq_len

    def state_dict(self) -> dict[str, Any]:
        """The share schedule, ``seq_len`` and the stage's first global step: what a resume must see again."""
        return {"share": asdict(self.share), "seq_len": self.seq_len, "stage_start_step": self.stage_start_step,
                "seed": self.seed}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it on resume, before building the dataloaders)."""
        if state.get("seed", self.seed) != self.seed:
            raise ConfigError(f"resuming with seed={self.seed} but the checkpoint's data used seed={state['seed']}")
        self.share = self._check_share(state["share"])
        self.seq_len, self.stage_start_step = state["seq_len"], state["stage_start_step"]

    # -- plans, sources and loaders ----------------------------------------------------------------------------------

    def plan(self, split: str = "train") -> MixturePlan:
        """The source choice of ``split``: validation keeps the schedule's final share throughout."""
        specs = self.specs if split == "train" else self.val_specs
        flags = tuple(source_kind(s.kind).multimodal for s in specs)
        share = self.share if split == "train" else constant_share(self.share.end)
        if split in ("val:text", "val:multimodal"):  # one group alone
            share = constant_share(float(split == "val:multimodal"))
        elif split != "train" and (not any(flags) or all(flags)):  # val sources of one group only
            share = constant_share(float(flags[0]))
        return MixturePlan(tuple(s.name for s in specs), tuple(s.weight for s in specs), flags, share, self.seed)

    def sources(self, split: str = "train") -> list[MixtureSource]:
        """The built sources of ``split`` (built once per ``seq_len``)."""
        split = split.split(":")[0]  # "val:text" reads the val sources
        key = (split, self.seq_len)
        if key not in self._sources:
            context = SourceContext(split, self.seed, self.seq_len, self.patch_size, self.max_patches, self.cache_dir)
            specs = self.specs if split == "train" else self.val_specs
            self._sources[key] = [build_source(spec, context) for spec in specs]
        return self._sources[key]

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the sources (they must share one vocabulary); ``None`` when no source carries one."""
        found = [s.tokenizer for s in self.sources("train") if getattr(s, "tokenizer", None) is not None]
        if any(t.to_str() != found[0].to_str() for t in found[1:]):
            raise ConfigError(f"the mixture sources {[s.name for s in self.specs]} use different tokenizers")
        return found[0] if found else None

    @property
    def vocab_size(self) -> int | None:
        """The shared tokenizer's vocabulary size (``None`` when no source carries a tokenizer)."""
        return None if self.tokenizer is None else self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        """Build the demos the sources name (once per node)."""
        if any(is_demo_name(spec.path) for spec in (*self.specs, *self.val_specs)):
            self.sources("train"), self.sources("val")

    def setup(self, stage: str | None = None) -> None:
        """Open the sources, so a bad path or an empty split fails before training starts."""
        self.sources("train"), self.sources("val")
        self.tokenizer  # noqa: B018 (checks that the sources agree on one)

    def train_dataloader(self) -> DataLoader:
        """Batches from the current step of the stage on, identical for any ``num_workers``."""
        first = self._start_batch()
        stop = None if self.train_batches is None else max(first, self.train_batches)
        return self._loader(self.batches("train", first, stop))

    @property
    def val_groups(self) -> list[str]:
        """Names of the validation loaders, in order: ``text`` and/or ``multimodal`` (the groups with sources)."""
        flags = {source_kind(s.kind).multimodal for s in self.val_specs}
        return [name for name, multimodal in (("text", False), ("multimodal", True)) if multimodal in flags]

    @property
    def val_set_names(self) -> list[str]:
        """What each of :attr:`val_groups` validates on: its sources' names joined by ``+`` (``sotu``,
        ``long_text+replay_text``). The joint stages' metric tags carry it (``val/text_ppl_sotu``), so distinct
        validation sets get distinct tags: name the validation sources of different data (or row lengths) apart."""
        names = {group: [s.name for s in self.val_specs if source_kind(s.kind).multimodal == (group == "multimodal")]
                 for group in self.val_groups}  # fmt: skip
        return ["+".join(names[group]) for group in self.val_groups]

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per :attr:`val_groups` (held-out text alone, multimodal alone), the same batches every time."""
        return [self._loader(self.batches(f"val:{group}", 0, self.val_batches)) for group in self.val_groups]

    def test_dataloader(self) -> list[DataLoader]:
        """The validation loaders (:meth:`val_dataloader`): the sources have no separate test split."""
        return self.val_dataloader()

    def predict_dataloader(self) -> list[DataLoader]:
        """The validation loaders (:meth:`val_dataloader`), one per :attr:`val_groups`."""
        return self.val_dataloader()

    def batches(self, split: str, first_batch: int, stop_batch: int | None) -> MixtureBatches:
        """The batch stream of this rank over ``[first_batch, stop_batch)``."""
        rank, world_size = self._rank_and_world()
        filler = self.gap_filler() if split == "train" else None
        return MixtureBatches(
            self.plan(split), self.sources(split), self.samples_per_batch, self.seq_len, self.merge_factor,
            self.rows_per_batch, rank, world_size, first_batch, stop_batch, filler,
        )  # fmt: skip

    def gap_filler(self) -> GapFiller | None:
        """The training text sources as gap filler (``None`` with ``fill_gaps`` off or no text source)."""
        pairs = zip(self.sources("train"), self.specs)
        text = [(source, spec.weight) for source, spec in pairs if not source.multimodal]
        if not self.fill_gaps or not text:
            return None
        max_rows = max(self.samples_per_batch, self.rows_per_batch or 0)
        return GapFiller(tuple(s for s, _ in text), tuple(w for _, w in text), self.seed, max_rows)

    def _loader(self, batches: MixtureBatches) -> DataLoader:
        return DataLoader(batches, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False, collate_fn=_keep_batch)  # fmt: skip

    def _start_batch(self) -> int:
        trainer = getattr(self, "trainer", None)
        if self.start_step is not None or trainer is None:
            return (self.start_step or 0) * (trainer.accumulate_grad_batches if trainer is not None else 1)
        if self.stage_start_step is None:  # a fresh stage (a resume restores it with load_state_dict)
            self.stage_start_step = trainer.global_step
        return (trainer.global_step - self.stage_start_step) * trainer.accumulate_grad_batches

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _default_share(self, specs: list[SourceSpec]) -> ShareSchedule:
        total = sum(s.weight for s in specs)
        return constant_share(sum(s.weight for s in specs if source_kind(s.kind).multimodal) / total)

    def _check_share(self, share: ShareSchedule | dict | None) -> ShareSchedule:
        schedule = self._default_share(self.specs) if share is None else share
        if isinstance(schedule, dict):
            schedule = ShareSchedule(**schedule)
        MixturePlan(tuple(s.name for s in self.specs), tuple(s.weight for s in self.specs),
                    tuple(source_kind(s.kind).multimodal for s in self.specs), schedule, self.seed)  # fmt: skip
        return schedule


def _parse_specs(configs: list[dict[str, Any]] | None, field: str) -> list[SourceSpec]:
    if not configs:
        raise ConfigError(f"{field} is empty: a mixture needs at least one source")
    return [SourceSpec.from_config(config) for config in configs]


def _keep_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch
