"""Where a dataset lives: a prepared local folder, a URL litdata streams from, or a demo name built on first use.

:class:`DataLocation` is the one small object every reader of prepared shards resolves its path through (the
datamodules, the mixture's sources): it turns ``demo:...`` into the demo's cache folder (through
:func:`mm_lightning.demo.demo_folder`), checks a local folder's layout, finds the tokenizer and gives each
split's address with the streaming options a remote one needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import fsspec
from tokenizers import Tokenizer

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.demo import demo_folder, demo_tokenizer, is_demo_name
from mm_lightning.errors import DataError


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``gs://``, ...) that litdata streams from, not a local folder."""
    return "://" in path


@dataclass(frozen=True)
class DataLocation:
    """A prepared dataset (``train/`` and ``val/`` litdata splits) by path, URL or demo name.

    Args:
        path: a prepared folder, a URL, or ``"demo:<name>"``.
        kind: the layout read: ``"text"`` (token shards with their ``tokenizer.json``), ``"image_text"`` or
            ``"chat"`` (conversations).
        tokenizer_path: a local ``tokenizer.json`` to use instead of the dataset's own.
        cache_dir: where litdata caches chunks of a remote dataset (litdata's default when ``None``).
    """

    path: str
    kind: str
    tokenizer_path: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _LAYOUTS:
            raise ValueError(f"DataLocation kind must be one of {sorted(_LAYOUTS)}, got {self.kind!r}")

    @property
    def is_demo(self) -> bool:
        """Whether the path names a demo."""
        return is_demo_name(self.path)

    @cached_property
    def root(self) -> str:
        """The prepared folder or URL (a demo is built on first use)."""
        if self.is_demo:
            return str(demo_folder(self.path, self.kind))
        return str(self.path).rstrip("/")

    @property
    def remote(self) -> bool:
        """Whether the data streams from a URL."""
        return is_remote(self.root)

    def check(self) -> None:
        """Refuse a local folder that lacks a piece of its layout, naming what is missing (URLs are not checked)."""
        if not self.remote:
            _LAYOUTS[self.kind](Path(self.root))

    def split(self, name: str) -> str:
        """The address of split ``name`` (``"train"`` or ``"val"``)."""
        return f"{self.root}/{name}"

    def stream_options(self) -> dict:
        """Keyword arguments of ``StreamingDataset`` for this location (the chunk cache of a remote one)."""
        return {"cache_dir": self.cache_dir} if self.remote and self.cache_dir else {}

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was written with: ``tokenizer_path``, the demo's, or the folder's own."""
        if self.tokenizer_path is not None:
            return tokenizer_lib.load_tokenizer(self.tokenizer_path)
        if self.is_demo:
            return tokenizer_lib.load_tokenizer(demo_tokenizer(self.path))
        if self.remote:
            return read_remote_tokenizer(f"{self.root}/tokenizer.json")
        self.check()
        if not (Path(self.root) / "tokenizer.json").is_file():
            raise DataError(
                f"{self.root} has no tokenizer.json: pass tokenizer_path=<the text stage's tokenizer.json>, or "
                "prepare the data with --tokenizer"
            )
        return tokenizer_lib.load_tokenizer(Path(self.root) / "tokenizer.json")

    def prepare(self) -> None:
        """Build a demo and its tokenizer unless one is given (a prepared folder or URL needs nothing)."""
        if self.is_demo:
            demo_folder(self.path, self.kind)
            if self.tokenizer_path is None:
                demo_tokenizer(self.path)

    def describe_split(self, split: str) -> str:
        """``N tokens in M chunks`` of a local token split, from its ``index.json``; a placeholder otherwise."""
        index = Path(self.root) / split / "index.json"
        if self.remote or not index.is_file():
            return "token count unknown"
        chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
        return f"{sum(c['dim'] or 0 for c in chunks)} tokens in {len(chunks)} chunk(s)"


def check_text_dir(root: Path) -> None:
    """Refuse a local folder that lacks a piece of the prepared text layout, naming what is missing."""
    pieces = {"tokenizer.json": root / "tokenizer.json", "train/": root / "train", "val/": root / "val"}
    missing = [name for name, path in pieces.items() if not path.exists()]
    missing += [
        f"{s}/index.json" for s in ("train", "val") if (root / s).is_dir() and not (root / s / "index.json").exists()
    ]
    if not root.is_dir():
        missing = ["the folder itself"]
    if missing:
        raise DataError(
            f"{root} is not a prepared text dataset: missing {', '.join(missing)}. "
            f"Create one with: mm-lightning prepare text YOUR_CORPUS --output {root}"
        )


def check_image_text_dir(root: Path) -> None:
    """Refuse a local folder that lacks a piece of the prepared image-text layout, naming what is missing."""
    _check_split_dirs(root, "image-text", "YOUR_PAIRS")


def check_chat_dir(root: Path) -> None:
    """Refuse a local folder that lacks a piece of the prepared conversation layout, naming what is missing."""
    _check_split_dirs(root, "chat", "YOUR_CONVERSATIONS.jsonl")


def _check_split_dirs(root: Path, kind: str, inputs: str) -> None:
    missing = [f"{s}/index.json" for s in ("train", "val") if not (root / s / "index.json").is_file()]
    if not root.is_dir():
        missing = ["the folder itself"]
    if missing:
        raise DataError(
            f"{root} is not a prepared {kind} dataset: missing {', '.join(missing)}. "
            f"Create one with: mm-lightning prepare {kind} {inputs} --output {root}"
        )


_LAYOUTS = {"text": check_text_dir, "image_text": check_image_text_dir, "chat": check_chat_dir}


def read_remote_tokenizer(url: str) -> Tokenizer:
    """A ``tokenizer.json`` read through fsspec, with a clear error when its backend is missing."""
    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            text = f.read()
    except (ImportError, ValueError, OSError) as err:
        raise DataError(
            f"Could not read {url} ({err}). Install the fsspec backend for this URL (s3fs, gcsfs, adlfs), "
            "or download tokenizer.json and pass tokenizer_path=..."
        ) from err
    return tokenizer_lib.tokenizer_from_str(text, source=url)


class LocatedTokenizer:
    """The tokenizer, vocabulary size and first-use build of a datamodule's ``self.location`` (a mixin)."""

    location: DataLocation
    _tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        """The project tokenizer of the located data (recorded in checkpoints, read by generation and checks)."""
        if self._tokenizer is None:
            self._tokenizer = self.location.tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (special tokens included)."""
        return self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        """Build a demo and its tokenizer on first use (once per node); prepared folders need nothing."""
        self.location.prepare()
