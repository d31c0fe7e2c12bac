"""The records ``mm-lightning predict`` writes, by hand; and packed image prompts equal one-image prompts."""

import math

import pytest
import torch

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.eval.predictions import attach_captions, decode_document, document_losses, embedding_records
from mm_lightning.generation.caption import image_prompt, packed_image_prompts
from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.media.images import ImagePreprocessing
from mm_lightning.models.vlm import build_vlm
from mm_lightning.ops.patches import image_to_patches, pack_patches
from mm_lightning.tokenizer import EOD_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, train_bpe_tokenizer

X = IGNORE_INDEX


def test_document_losses_by_hand():
    """Uniform logits over 4 tokens cost ln 4 a target; a confident right guess costs ~0. Padding is left out."""
    input_ids = torch.tensor([[7, 8, EOD_ID, IMAGE_START_ID, IMAGE_ID, IMAGE_ID], [9, 9, 1, 1, 1, 1]])
    labels = torch.tensor([[3, EOD_ID, 3, X, X, 2], [1, 3, X, X, X, X]])  # ids below the 4 logits
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    logits = torch.zeros(2, 6, 4)
    logits[0, 5, 2] = 100.0  # the image document's one target, guessed right
    records = document_losses(input_ids, logits, labels, seq_ids)
    assert [(r["row"], r["document"], r["tokens"]) for r in records] == [(0, 0, 3), (0, 1, 1), (1, 0, 2)]
    assert records[0]["loss"] == pytest.approx(math.log(4)) and records[0]["ppl"] == pytest.approx(4.0)
    assert records[1]["loss"] == pytest.approx(0.0, abs=1e-6) and records[1]["image_tokens"] == 2
    assert "image_tokens" not in records[0] and "text" not in records[0]


def test_documents_decode_with_images_marked_and_take_their_images_captions():
    tokenizer = train_bpe_tokenizer(["hello world", "a red square"] * 4, vocab_size=300)
    ids = [*tokenizer_lib.encode(tokenizer, "hello"), IMAGE_START_ID, IMAGE_ID, IMAGE_ID, IMAGE_END_ID,
           *tokenizer_lib.encode(tokenizer, " world"), EOD_ID]  # fmt: skip
    assert decode_document(tokenizer, ids) == "hello<image> world"

    records = [{"document": 0, "image_tokens": 6}, {"document": 1}, {"document": 2, "image_tokens": 1}]
    attach_captions(records, ["first", "second", "third"], [4, 2, 1])  # images of 4, 2 and 1 tokens, in order
    assert records == [{"document": 0, "captions": ["first", "second"]}, {"document": 1},
                       {"document": 2, "captions": ["third"]}]  # fmt: skip


def test_embedding_records_name_the_nearest_caption():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swapped: each image is nearest the other's caption
    records = embedding_records(image, text, ["cat", "dog"])
    assert [r["nearest_caption"] for r in records] == ["dog", "cat"]
    assert [r["similarity"] for r in records] == [0.0, 0.0] and records[0]["image_embed"] == [1.0, 0.0]


def test_packed_image_prompts_equal_one_image_prompts(one_thread):
    """``predict`` captions a packed batch's images from one ViT pass; each prompt is the one ``generate`` builds."""
    torch.manual_seed(0)
    vlm = build_vlm().eval()
    preprocessing = ImagePreprocessing(vlm.vit.config.patch_size, 36)
    images = [torch.rand(3, 56, 84) * 2 - 1, torch.rand(3, 70, 42) * 2 - 1]
    cut = [image_to_patches(image, preprocessing.patch_size, preprocessing.max_patches) for image in images]
    packed = pack_patches([patches for patches, _ in cut], [grid for _, grid in cut])
    with torch.no_grad():
        prompts = packed_image_prompts(vlm, packed["patches"], packed["grid_hw"], packed["seq_ids"])
        alone = [image_prompt(vlm, image, preprocessing) for image in images]
    assert [p.shape for p in prompts] == [a.shape for a in alone]
    for prompt, single in zip(prompts, alone, strict=True):
        torch.testing.assert_close(prompt, single, rtol=1e-4, atol=1e-5)
