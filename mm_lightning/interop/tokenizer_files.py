"""The tokenizer files of a Hugging Face folder: ``tokenizer.json`` plus the small JSON files ``AutoTokenizer`` reads.

The project's tokenizer is a ``tokenizers`` JSON already (``mm_lightning/tokenizer.py``), so an export writes it
as it is, with a ``tokenizer_config.json`` and ``special_tokens_map.json`` naming its special tokens: end of
document as EOS, ``<|pad|>`` as padding, the image tokens as additional special tokens, and no BOS (the project
adds none). A folder imported from elsewhere keeps its own tokenizer files, and an export writes them back as read.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from mm_lightning.atomic_io import write_bytes
from mm_lightning.interop.files import write_json
from mm_lightning.tokenizer import (
    EOD_ID,
    EOD_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    PAD_ID,
    PAD_TOKEN,
)

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
"""The files an import keeps from a Hugging Face folder so that an export writes them back unchanged."""
PROJECT_TOKEN_IDS = {"bos_token_id": None, "eos_token_id": EOD_ID, "pad_token_id": PAD_ID}
"""The ``config.json`` token ids of a model trained with the project's tokenizer."""


def read_tokenizer_files(folder: str | Path) -> dict[str, str]:
    """The text of each of :data:`HF_TOKENIZER_FILES` that ``folder`` has."""
    return {name: (Path(folder) / name).read_text() for name in HF_TOKENIZER_FILES if (Path(folder) / name).is_file()}


def write_tokenizer_files(folder: str | Path, files: dict[str, str]) -> None:
    """Write back files :func:`read_tokenizer_files` read."""
    for name, text in files.items():
        write_bytes(Path(folder) / name, text.encode())


def write_project_tokenizer(folder: str | Path, tokenizer: Tokenizer, max_length: int) -> None:
    """The project's tokenizer as ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Args:
        folder: the export folder.
        tokenizer: a tokenizer whose special tokens sit at the project's ids.
        max_length: the tokenizer's ``model_max_length`` (the model's context length).
    """
    folder = Path(folder)
    write_bytes(folder / "tokenizer.json", tokenizer.to_str().encode())
    special = {
        "eos_token": EOD_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": [IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN],
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        **special,
    }
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", special)
