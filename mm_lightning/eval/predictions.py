"""What ``mm-lightning predict`` writes, as JSON-ready records (no Lightning).

The stages' ``predict_step`` return lists of these records and :class:`~mm_lightning.callbacks.PredictionWriter`
writes them one JSON object a line: per packed document its next-token loss and perplexity (text and joint
stages; captioning rows of the alignment stage), per image-caption pair both embeddings and the nearest caption of
the batch (ViT stage); the VLM stages add greedy captions (:func:`attach_captions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.tokenizer import IMAGE_ID, IMAGE_START_ID, SPECIAL_TOKENS


def decode_document(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of a document's token ids: each image span shown as ``<image>``, other special tokens dropped."""
    pieces, words = [], []
    for token in ids:
        if token == IMAGE_START_ID:
            pieces += [tokenizer_lib.decode(tokenizer, words), "<image>"]
            words = []
        elif token >= len(SPECIAL_TOKENS):
            words.append(token)
    return "".join([*pieces, tokenizer_lib.decode(tokenizer, words)])


def document_losses(input_ids: Tensor, logits: Tensor, labels: Tensor, seq_ids: Tensor,
                    tokenizer: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """One record per packed document (or piece of one) of a batch, in reading order.

    Each has its ``row``, ``document`` (packed-sequence id in the row), ``tokens`` (targets), mean next-token ``loss``
    (nats) and ``ppl`` (both ``None`` without targets); ``text`` with a tokenizer (:func:`decode_document`); and
    ``image_tokens`` (its ``<|image|>`` inputs) when it has any. Padding (no target, no image) is left out.

    Args:
        input_ids: ``[B, T]`` inputs.
        logits: ``[B, T, V]`` next-token logits.
        labels: ``[B, T]`` targets, ``IGNORE_INDEX`` where none.
        seq_ids: ``[B, T]`` packed-sequence ids.
        tokenizer: decodes ``text`` (none without it).
    """
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")  # [B, T]
    counted = labels != IGNORE_INDEX  # [B, T]
    records = []
    for row in range(labels.shape[0]):
        for document in seq_ids[row].unique().tolist():
            where = seq_ids[row] == document  # [T]
            targets, ids = where & counted[row], input_ids[row][where]
            tokens, images = int(targets.sum()), int((ids == IMAGE_ID).sum())
            if not tokens and not images:
                continue
            loss = float(nll[row][targets].mean()) if tokens else None
            record = {"row": row, "document": document, "tokens": tokens, "loss": loss,
                      "ppl": None if loss is None else math.exp(loss)}  # fmt: skip
            if tokenizer is not None:
                record["text"] = decode_document(tokenizer, ids.tolist())
            if images:
                record["image_tokens"] = images
            records.append(record)
    return records


def attach_captions(records: list[dict[str, Any]], captions: Sequence[str], image_tokens: Sequence[int]) -> None:
    """Give each :func:`document_losses` record the captions of its images, in place of its ``image_tokens``.

    Args:
        records: the batch's documents in reading order.
        captions: a caption per image of the batch, in reading order.
        image_tokens: the ``<|image|>`` positions each image takes.
    """
    images = iter(zip(captions, image_tokens, strict=True))
    for record in records:
        left, own = record.pop("image_tokens", 0), []
        while left > 0:
            caption, tokens = next(images)
            own.append(caption)
            left -= tokens
        if own:
            record["captions"] = own


def embedding_records(image_embed: Tensor, text_embed: Tensor, captions: Sequence[str],
                      digits: int = 5) -> list[dict[str, Any]]:  # fmt: skip
    """Per image-caption pair: the caption, the batch's caption nearest the image (zero-shot retrieval), the pair's
    cosine similarity and both L2-normalised embeddings (``[B, E]`` each), rounded to ``digits``."""
    similarity = image_embed.float() @ text_embed.float().T  # [B, B]
    nearest = similarity.argmax(dim=1).tolist()  # [B]
    return [
        {
            "caption": caption,
            "nearest_caption": captions[nearest[i]],
            "similarity": round(float(similarity[i, i]), digits),
            "image_embed": [round(v, digits) for v in image_embed[i].float().tolist()],
            "text_embed": [round(v, digits) for v in text_embed[i].float().tolist()],
        }
        for i, caption in enumerate(captions)
    ]
