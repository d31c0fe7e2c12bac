"""ChatDataModule (mm_lightning/data/chat.py): batches with the joint stages' mixture layout, labels on the answers
only, one attention sequence per conversation, image spans of the projector's token count, the val prompts equal to
the training prefix (the same logits through a VLM), and the demo name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.pattern_sources import mixture

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.chat import END_OF_TURN_ID, render
from mm_lightning.data import ChatDataModule
from mm_lightning.data.chat import ChatStream, collate_chat
from mm_lightning.data.mixture.packing import tokens_per_image
from mm_lightning.demo.instructions import DEMO_CHATS, DemoChat, generate_conversation, write_chat_demo
from mm_lightning.errors import ConfigError, DataError
from mm_lightning.losses.next_token import IGNORE_INDEX, NextTokenLoss
from mm_lightning.models.vlm import build_vlm, expand_image_placeholders
from mm_lightning.tokenizer import IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID

SEQ_LEN = 160


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chat_tok") / "tokenizer.json"
    texts = [render(generate_conversation("train", i).messages) for i in range(400)]
    tokenizer_lib.train_bpe_tokenizer(texts, vocab_size=700, out_path=path)
    return path


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_demo(DEMO_CHATS["emoji-chat"], tmp_path_factory.mktemp("chat") / "data", {"train": 48, "val": 12})


def datamodule(folder: Path, tok_path: Path, **kwargs) -> ChatDataModule:
    options = dict(batch_size=6, seq_len=SEQ_LEN, max_patches=48, tokenizer_path=str(tok_path), seed=0)
    data = ChatDataModule(str(folder), **{**options, **kwargs})
    data.setup("fit")
    return data


def test_batches_have_the_keys_dtypes_and_layout_of_the_mixture_batches(chat_folder, tok_path):
    batch = next(iter(datamodule(chat_folder, tok_path).train_dataloader()))
    reference = mixture().batches("train", 0, 1).batch(0)
    assert set(batch) == set(reference)
    for key, value in reference.items():
        assert batch[key].dtype == value.dtype and batch[key].dim() == value.dim(), key
    rows = batch["input_ids"].shape[0]
    for key in ("input_ids", "labels", "seq_ids", "position_ids"):
        assert batch[key].shape == (rows, SEQ_LEN)
    patch_dim = 3 * 14 * 14
    assert batch["patches"].shape == (1, int(batch["grid_hw"].prod(1).sum()), patch_dim)
    assert batch["patch_seq_ids"].shape == batch["patches"].shape[:2]
    assert batch["sample_tokens"].shape == batch["sample_index"].shape == (6,)
    assert int(batch["sample_multimodal"].sum()) == batch["grid_hw"].shape[0]  # one image per demo conversation


def test_labels_are_the_answers_and_each_conversation_is_one_sequence(chat_folder, tok_path):
    data = datamodule(chat_folder, tok_path)
    items = [data.val_dataset[i] for i in range(4)]
    batch = collate_chat(items, 512, merge_factor=2, rows_per_batch=1)  # one row: the samples in order
    assert batch["input_ids"].shape == (1, 512) and batch["sample_index"].tolist() == [0, 1, 2, 3]
    expected = []
    for sample, _ in items:
        expected += [t for t, target in zip(sample.token_ids, sample.loss_mask) if target]
    labels = batch["labels"]
    assert labels[labels != IGNORE_INDEX].tolist() == expected
    assert expected.count(END_OF_TURN_ID) == sum(sample.token_ids.count(END_OF_TURN_ID) for sample, _ in items)
    # one sequence per conversation although EOD ends every answer inside it; positions run 0..n-1 in each
    seq_ids, positions = batch["seq_ids"][0], batch["position_ids"][0]
    lengths = batch["sample_tokens"].tolist()
    assert seq_ids[: sum(lengths)].tolist() == [j for j, n in enumerate(lengths) for _ in range(n)]
    assert positions[: sum(lengths)].tolist() == [p for n in lengths for p in range(n)]
    assert (seq_ids[sum(lengths) :] == 4).all()  # the padding: a sequence of its own


def test_each_image_is_a_span_of_the_projectors_token_count(chat_folder, tok_path):
    batch = next(iter(datamodule(chat_folder, tok_path, max_patches=30).train_dataloader()))
    counts = [tokens_per_image(tuple(grid), 2) for grid in batch["grid_hw"].tolist()]
    ids = batch["input_ids"].flatten().tolist()
    starts = [p for p, t in enumerate(ids) if t == IMAGE_START_ID]
    assert len(starts) == len(counts)
    for start, count in zip(starts, counts):
        assert ids[start + 1 : start + 1 + count] == [IMAGE_ID] * count and ids[start + 1 + count] == IMAGE_END_ID
    assert not ((batch["labels"] == IMAGE_ID) | (batch["labels"] == IMAGE_START_ID)).any()


def test_a_batch_runs_through_the_vlm_as_the_joint_stage_feeds_it(chat_folder, tok_path, one_thread):
    torch.manual_seed(0)
    vlm = build_vlm()
    batch = next(iter(datamodule(chat_folder, tok_path).train_dataloader()))
    keys = ("input_ids", "patches", "grid_hw", "patch_seq_ids", "position_ids", "seq_ids")
    logits = vlm(**{key: batch[key] for key in keys})
    loss = NextTokenLoss()(logits, batch["labels"])["loss"]
    assert torch.isfinite(loss) and loss > 0


def test_val_prompts_give_the_logits_training_sees_before_each_answer(chat_folder, tok_path, one_thread):
    torch.manual_seed(0)
    vlm = build_vlm().eval()
    data = datamodule(chat_folder, tok_path)
    shown = [generate_conversation("val", i) for i in range(12)]
    index = next(i for i, c in enumerate(shown) if c.with_image and len(c.messages) >= 4)  # an image, 2+ answers
    sample = data.val_dataset[index][0]
    prompts = data.val_conversations(limit=index + 1)
    prompts = [p for p in prompts if p.prompt_ids == sample.token_ids[: len(p.prompt_ids)]]
    assert len(prompts) >= 2 and all(len(p.images) == 1 for p in prompts)
    batch = collate_chat([data.val_dataset[index]], SEQ_LEN, 2, None)
    keys = ("input_ids", "patches", "grid_hw", "patch_seq_ids", "position_ids", "seq_ids")
    with torch.no_grad():
        packed = vlm(**{k: batch[k] for k in keys})[0]  # [L, V]
        for prompt in prompts:  # the later ones hold earlier answers and their EOD
            counts = [vlm.projector.num_tokens(*grid) for _, grid in prompt.images]
            ids = torch.tensor([expand_image_placeholders(prompt.prompt_ids, counts, IMAGE_ID)])
            images = collate_chat([(sample, 0)], SEQ_LEN, 2, None)
            alone = vlm(ids, images["patches"], images["grid_hw"], images["patch_seq_ids"])[0, -1]
            assert torch.allclose(alone, packed[ids.shape[1] - 1], atol=1e-4)
            target = int(batch["labels"][0, ids.shape[1] - 1])
            assert tokenizer_lib.decode(data.tokenizer, [target]).strip() in prompt.answer


def test_val_conversations_list_every_answer_with_its_prompt_images_and_tag(chat_folder, tok_path):
    data = datamodule(chat_folder, tok_path)
    prompts = data.val_conversations()
    expected = [(m.text, m.tag) for i in range(12) for m in generate_conversation("val", i).messages
                if m.role == "assistant"]  # fmt: skip
    assert [(p.answer, p.tag) for p in prompts] == expected
    for prompt in prompts:
        assert prompt.prompt_ids.count(IMAGE_ID) == len(prompt.images)
        assert tokenizer_lib.decode(data.tokenizer, prompt.prompt_ids).endswith("\nAssistant:")
    first_two = data.val_conversations(limit=2)
    assert [p.prompt_ids for p in first_two] == [p.prompt_ids for p in prompts[: len(first_two)]]


def test_the_demo_name_builds_on_first_use(tmp_path, tok_path, monkeypatch):
    monkeypatch.setenv("MM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(DEMO_CHATS, "emoji-chat", DemoChat(version="test", train=16, val=4))
    data = ChatDataModule("demo:emoji-chat", batch_size=4, tokenizer_path=str(tok_path), max_patches=32)
    data.prepare_data()
    assert (tmp_path / "cache" / "demo" / "emoji-chat-test" / "prep_summary.json").is_file()
    data.setup("fit")
    assert len(data.train_dataset) == 16 and len(data.val_conversations()) >= 4
    assert isinstance(data.val_dataset, ChatStream)
    with pytest.raises(ConfigError, match="not chat data"):
        ChatDataModule("demo:emoji-scenes", tokenizer_path=str(tok_path)).root  # noqa: B018


def test_bad_settings_and_folders_are_refused(tmp_path, tok_path):
    with pytest.raises(ConfigError, match="seq_len"):
        ChatDataModule(str(tmp_path), seq_len=1)
    with pytest.raises(DataError, match="prepare chat"):
        ChatDataModule(str(tmp_path / "nothing"), tokenizer_path=str(tok_path)).setup("fit")
