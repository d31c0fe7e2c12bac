"""Mixture sources built by kind from YAML-friendly specs, and the two built in: text blocks and image-caption pairs.

A spec is a dict such as ``{name: captions, kind: image_text, path: demo:emoji-scenes, weight: 1.0}``; keys other
than ``name``, ``kind``, ``path`` and ``weight`` are options of the kind's builder. A builder is registered once per
kind with :func:`register_source` (a duplicate kind raises) and turns a spec and a :class:`SourceContext` (split,
seed, sizes) into a :class:`~mm_lightning.data.mixture.plan.MixtureSource`. Paths resolve as the single-source
datamodules resolve them (prepared folders, URLs, ``demo:...`` names), through the same
:class:`~mm_lightning.data.location.DataLocation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from litdata import StreamingDataset, TokensLoader

from mm_lightning.data.copy_rows import GAP, SPAN, TRAIN_ROWS, VAL_ROWS, check_copy_rows, copy_rows_dataset
from mm_lightning.data.image_text import ImageTextTransform
from mm_lightning.data.location import DataLocation
from mm_lightning.data.mixture.long_sources import open_long_source
from mm_lightning.data.mixture.plan import MixtureSource, epoch_item
from mm_lightning.data.recall_rows import RecallRowsDataset, check_recall_config
from mm_lightning.data.restated_rows import DEFAULT_SPAN, check_restating, restate_opening
from mm_lightning.demo import demo_tokenizer
from mm_lightning.demo.recall import RecallConfig
from mm_lightning.errors import ConfigError
from mm_lightning.media.interleave import MixSample
from mm_lightning.tokenizer import IMAGE_SPAN, load_tokenizer


@dataclass(frozen=True)
class SourceSpec:
    """One source of a mixture, as written in a config."""

    name: str
    """Unique name (logged, and part of the seed of its item order)."""
    kind: str
    """A registered kind: ``text``, ``image_text``, or whatever others register."""
    path: str
    """A prepared folder, a URL, or a ``demo:...`` name."""
    weight: float = 1.0
    """Relative weight within its group (multimodal or text), and between groups without a share schedule."""
    options: dict[str, Any] = field(default_factory=dict)
    """The remaining keys, passed to the kind's builder."""

    @classmethod
    def from_config(cls, config: dict[str, Any] | SourceSpec) -> SourceSpec:
        """A spec from a config dict, with a clear error for a missing key or an unknown kind."""
        if isinstance(config, SourceSpec):
            return config
        if not isinstance(config, dict):
            raise ConfigError(f"a mixture source must be a mapping with name, kind and path, got {config!r}")
        missing = [key for key in ("name", "kind", "path") if key not in config]
        if missing:
            raise ConfigError(f"mixture source {config!r} lacks {', '.join(missing)}")
        options = {k: v for k, v in config.items() if k not in ("name", "kind", "path", "weight")}
        spec = cls(str(config["name"]), str(config["kind"]), str(config["path"]), float(config.get("weight", 1.0)),
                   options)  # fmt: skip
        source_kind(spec.kind)
        if not spec.weight > 0:
            raise ConfigError(f"mixture source {spec.name!r}: weight={spec.weight} must be > 0")
        return spec


@dataclass(frozen=True)
class SourceContext:
    """What a builder needs besides its spec."""

    split: str
    """``train`` (items in a seeded order, epoch after epoch) or ``val`` (items in stored order)."""
    seed: int
    """The mixture seed."""
    seq_len: int
    """Positions per packed row (a text source's default block is ``seq_len + 1`` tokens: one full row)."""
    patch_size: int
    """Patch side in pixels."""
    max_patches: int
    """Cap on patches per image."""
    cache_dir: str | None = None
    """Where litdata caches chunks of remote paths."""


@dataclass(frozen=True)
class SourceKind:
    """A registered kind: its builder and whether its samples count as multimodal."""

    build: Callable[[SourceSpec, SourceContext], MixtureSource]
    multimodal: bool


_KINDS: dict[str, SourceKind] = {}


def register_source(kind: str, multimodal: bool) -> Callable[[Callable], Callable]:
    """Register a builder ``(spec, context) -> MixtureSource`` for ``kind``; a duplicate kind raises."""

    def decorate(build: Callable[[SourceSpec, SourceContext], MixtureSource]) -> Callable:
        if kind in _KINDS:
            raise ValueError(f"mixture source kind {kind!r} is already registered")
        _KINDS[kind] = SourceKind(build, multimodal)
        return build

    return decorate


def source_kind(kind: str) -> SourceKind:
    """The registered kind, or a :class:`ConfigError` listing the known ones."""
    if kind not in _KINDS:
        raise ConfigError(
            f"unknown mixture source kind {kind!r}; registered: {', '.join(sorted(_KINDS))} (a new kind registers "
            "with @register_source(kind, multimodal=...) in a module imported before the datamodule is built)"
        )
    return _KINDS[kind]


def build_source(spec: SourceSpec, context: SourceContext) -> MixtureSource:
    """Build one source of ``context.split`` and check that it agrees with its kind."""
    kind = source_kind(spec.kind)
    source = kind.build(spec, context)
    if source.multimodal != kind.multimodal or source.name != spec.name:
        raise ValueError(f"the {spec.kind!r} builder returned a source that disagrees with its spec {spec}")
    if len(source) == 0:
        raise ConfigError(f"mixture source {spec.name!r} ({spec.path}) has no {context.split} items")
    return source


def _check_options(spec: SourceSpec, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise ConfigError(f"source {spec.name!r} ({spec.kind}): unknown option(s) {unknown}; allowed: {list(allowed)}")


class _StreamSource:
    """One split of a litdata stream whose ``k``-th use reads item ``epoch_item(k, ...)`` (seeded per epoch)."""

    def __init__(self, name: str, dataset: Any, tokenizer: Any, seed: int, shuffle: bool):
        self.name, self.dataset, self.tokenizer, self.seed, self.shuffle = name, dataset, tokenizer, seed, shuffle

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, k: int) -> Any:
        return self.dataset[epoch_item(k, len(self), self.seed, self.name, self.shuffle)]


class TextTokenSource(_StreamSource):
    """Blocks of ``text_len`` tokens of a litdata token stream (``data_prep/prepare_text.py``'s shards).

    A block may hold several documents, each ended by EOD (the packing starts a new document after it), or a piece
    of one; every token is a target. Blocks never span two chunks (litdata's ``TokensLoader``). With a
    ``repeat_share``, that share of the blocks say their opening span again (:mod:`~mm_lightning.data.restated_rows`).
    """

    multimodal = False

    def __init__(self, name: str, dataset: Any, tokenizer: Any, seed: int, shuffle: bool, repeat_share: float = 0.0,
                 repeat_span: tuple[int, int] = DEFAULT_SPAN):  # fmt: skip
        super().__init__(name, dataset, tokenizer, seed, shuffle)
        self.repeat_share, self.repeat_span = repeat_share, repeat_span

    def sample(self, k: int) -> MixSample:
        block = restate_opening(self.item(k), self.repeat_share, self.repeat_span, self.seed)
        return MixSample(token_ids=block.tolist(), images=[], source=self.name)


@register_source("text", multimodal=False)
def build_text_source(spec: SourceSpec, context: SourceContext) -> TextTokenSource:
    """Options: ``text_len`` (tokens per block, default ``seq_len + 1``), ``tokenizer_path``, ``repeat_share`` and
    ``repeat_span`` (training blocks that say their opening again, as ``TextDataModule``'s; never in ``val``)."""
    _check_options(spec, ("text_len", "tokenizer_path", "repeat_share", "repeat_span"))
    text_len = int(spec.options.get("text_len", context.seq_len + 1))
    if text_len < 2:
        raise ConfigError(f"source {spec.name!r}: text_len={text_len} must be at least 2")
    share = float(spec.options.get("repeat_share", 0.0)) if context.split == "train" else 0.0
    low, high = spec.options.get("repeat_span", DEFAULT_SPAN)
    try:
        check_restating(share, (int(low), int(high)), text_len - 1)
    except ConfigError as error:
        raise ConfigError(f"source {spec.name!r}: {error}") from None
    location = DataLocation(spec.path, "text", spec.options.get("tokenizer_path"), context.cache_dir)
    dataset = _open_split(location, context, item_loader=TokensLoader(block_size=text_len))
    return TextTokenSource(spec.name, dataset, location.tokenizer(), context.seed, context.split == "train", share,
                           (int(low), int(high)))  # fmt: skip


class CopyRowsSource:
    """Copy rows (:mod:`~mm_lightning.data.copy_rows`: random spans said twice) as text blocks, for a stage that must
    keep or stretch copying from the context, such as the long-context stage at its new length."""

    multimodal = False

    def __init__(self, name: str, rows: Any, tokenizer: Any, repeat_loss_only: bool = False):
        self.name, self.rows, self.tokenizer, self.repeat_loss_only = name, rows, tokenizer, repeat_loss_only

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, k: int) -> MixSample:
        ids, predictable = self.rows.row(k % len(self.rows))
        mask = predictable.tolist() if self.repeat_loss_only else None
        return MixSample(token_ids=ids.tolist(), images=[], loss_mask=mask, source=self.name)


@register_source("copy_rows", multimodal=False)
def build_copy_rows_source(spec: SourceSpec, context: SourceContext) -> CopyRowsSource:
    """``path``: the text corpus whose vocabulary the spans are drawn from. Options: ``text_len`` (tokens per row,
    default ``seq_len + 1``), ``span`` (default 32), ``gap`` (most random ids between a span and its repeat, default
    32; as long as the row for copying across its whole length), ``decoys`` (pieces of the span planted in its gap,
    default 0: :class:`~mm_lightning.data.copy_rows.CopyRowsDataset`), ``lead`` (most random ids before each span,
    default 0; the decoys then lie before the span too, so the farthest match is not always the right one),
    ``min_gap`` (fewest random ids between a span and its repeat, default 0: a long row's copies all reach far back),
    ``near_decoys`` (two-token pieces of the span at the gap's end, just before the repeat, default 0),
    ``rows`` (training rows, default 65,536; ``val`` has 64 of another seed), ``loss`` (``all``, the default: every
    token; ``repeat``: only the repeats' tokens a copy can predict, so the random ids do not teach the model a flat
    guess), ``tokenizer_path``."""
    options = ("text_len", "span", "gap", "min_gap", "decoys", "near_decoys", "lead", "rows", "loss", "tokenizer_path")
    _check_options(spec, options)
    loss = spec.options.get("loss", "all")
    if loss not in ("all", "repeat"):
        raise ConfigError(f"source {spec.name!r} (copy_rows): loss must be 'all' or 'repeat', got {loss!r}")
    defaults = {"text_len": context.seq_len + 1, "span": SPAN, "gap": GAP, "decoys": 0, "lead": 0, "min_gap": 0,
                "near_decoys": 0}  # fmt: skip
    text_len, span, gap, decoys, lead, min_gap, near = (int(spec.options.get(key, default))
                                                        for key, default in defaults.items())  # fmt: skip
    check_copy_rows(span, gap, text_len - 1, f"source {spec.name!r} (copy_rows)", decoys, lead, min_gap, near)
    tokenizer = DataLocation(spec.path, "text", spec.options.get("tokenizer_path"), context.cache_dir).tokenizer()
    rows = int(spec.options.get("rows", TRAIN_ROWS)) if context.split == "train" else VAL_ROWS
    seed = 2 * context.seed + (context.split == "val")
    dataset = copy_rows_dataset(tokenizer, rows, text_len - 1, span, gap, seed, decoys, lead, min_gap, near)
    return CopyRowsSource(spec.name, dataset, tokenizer, repeat_loss_only=loss == "repeat")


class RecallRowsSource:
    """Recall rows (:mod:`~mm_lightning.data.recall_rows`: facts stated, then stated again) as text blocks."""

    multimodal = False

    def __init__(self, name: str, rows: RecallRowsDataset, tokenizer: Any):
        self.name, self.rows, self.tokenizer = name, rows, tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, k: int) -> MixSample:
        return MixSample(token_ids=self.rows[k % len(self.rows)].tolist(), images=[], source=self.name)


@register_source("recall_rows", multimodal=False)
def build_recall_rows_source(spec: SourceSpec, context: SourceContext) -> RecallRowsSource:
    """``path``: the text corpus whose tokenizer writes the rows. Options: ``text_len`` (tokens per row, default
    ``seq_len + 1``), ``facts`` (``[fewest, most]`` a document states, default ``[1, 3]``), ``passages`` (``[fewest,
    most]`` address sentences between two statements, default ``[1, 4]``: how far back a look-up reaches),
    ``digits`` (default ``[3, 5]``), ``mentions`` (``[fewest, most]`` sentences that use the word before a key without
    one, default ``[0, 0]``), ``rows`` (training rows, default 65,536; ``val`` has 64 of another seed),
    ``tokenizer_path``."""
    _check_options(spec, ("text_len", "facts", "passages", "digits", "mentions", "rows", "tokenizer_path"))
    where = f"source {spec.name!r} (recall_rows)"

    def pair(key: str, default: tuple[int, int]) -> tuple[int, int]:
        value = spec.options.get(key, default)
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(n, int) for n in value):
            raise ConfigError(f"{where}: {key} must be a pair of integers [fewest, most], got {value!r}")
        return int(value[0]), int(value[1])

    defaults = RecallConfig()
    config = RecallConfig(pair("facts", defaults.facts), pair("passages", defaults.passage_sentences),
                          pair("digits", defaults.digits), pair("mentions", defaults.mentions))  # fmt: skip
    check_recall_config(config, where)
    text_len = int(spec.options.get("text_len", context.seq_len + 1))
    if text_len < 2:
        raise ConfigError(f"{where}: text_len must be at least 2, got {text_len}")
    tokenizer = DataLocation(spec.path, "text", spec.options.get("tokenizer_path"), context.cache_dir).tokenizer()
    rows = int(spec.options.get("rows", TRAIN_ROWS)) if context.split == "train" else VAL_ROWS
    seed = 2 * context.seed + (context.split == "val")
    return RecallRowsSource(spec.name, RecallRowsDataset(tokenizer, rows, text_len - 1, seed, config), tokenizer)


class ImageTextSource(_StreamSource):
    """Image-caption pairs (``data_prep/prepare_image_text.py``'s shards): ``<|image_start|> <|image|> <|image_end|>
    caption EOD``, with the loss on the caption and its EOD only.

    Decoding, patching and caption tokenization are :class:`~mm_lightning.data.image_text.ImageTextTransform`'s.
    """

    multimodal = True

    def sample(self, k: int) -> MixSample:
        item = self.item(k)
        caption = list(item["caption_ids"][1:])  # the transform opens with EOD for the caption decoder; drop it
        prompt = list(IMAGE_SPAN)
        return MixSample(token_ids=prompt + caption, images=[(item["patches"], tuple(item["grid"]))],
                         loss_mask=[False] * len(prompt) + [True] * len(caption), source=self.name)  # fmt: skip


@register_source("image_text", multimodal=True)
def build_image_text_source(spec: SourceSpec, context: SourceContext) -> ImageTextSource:
    """Options: ``max_caption_len`` (caption tokens with EOD + 1, default 48), ``tokenizer_path``."""
    _check_options(spec, ("max_caption_len", "tokenizer_path"))
    location = DataLocation(spec.path, "image_text", spec.options.get("tokenizer_path"), context.cache_dir)
    tokenizer = location.tokenizer()
    max_caption_len = int(spec.options.get("max_caption_len", 48))
    transform = ImageTextTransform(tokenizer, context.patch_size, context.max_patches, max_caption_len)
    dataset = _open_split(location, context, transform=transform)
    return ImageTextSource(spec.name, dataset, tokenizer, context.seed, context.split == "train")


_LONG_OPTIONS = {
    "video": ("max_frames", "max_patches_per_frame", "prompt", "tokenizer_path"),
    "documents": ("max_images", "max_patches_per_image", "tokenizer_path"),
    "long_text": ("max_tokens", "tokenizer_path"),
}


def _build_long_source(kind: str, spec: SourceSpec, context: SourceContext) -> MixtureSource:
    """Clips, interleaved documents or whole documents (:mod:`~mm_lightning.data.mixture.long_sources`): prepared
    folders or long demos."""
    _check_options(spec, _LONG_OPTIONS[kind])
    options = {k: v for k, v in spec.options.items() if k != "tokenizer_path"}
    if kind != "long_text":
        options.setdefault("patch_size", context.patch_size)
        options.setdefault("max_patches_per_frame" if kind == "video" else "max_patches_per_image",
                           context.max_patches)  # fmt: skip
    # the long demos are tokenized with the text demo's vocabulary, as the scene captions are
    tokenizer = load_tokenizer(spec.options.get("tokenizer_path") or demo_tokenizer())
    folder_kind = "text" if kind == "long_text" else kind
    source = open_long_source(spec.path, tokenizer, context.split, kind=folder_kind, **options)
    source.name = spec.name
    return source


for _kind, _multimodal in (("video", True), ("documents", True), ("long_text", False)):
    register_source(_kind, multimodal=_multimodal)(partial(_build_long_source, _kind))


def _open_split(location: DataLocation, context: SourceContext, **kwargs: Any) -> StreamingDataset:
    """The ``context.split`` stream of a location, unshuffled (the source orders its items)."""
    location.check()
    return StreamingDataset(location.split(context.split), shuffle=False, **location.stream_options(), **kwargs)
