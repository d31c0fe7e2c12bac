"""TextDataModule: packed next-token batches, clear errors, resumption, and the demo corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from mm_lightning.data import TextDataModule
from mm_lightning.demo import corpora as demo_lib
from mm_lightning.prep.text import prepare_text_shards


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared corpus: 300 short documents (so many EODs per row), 15% held out."""
    root = tmp_path_factory.mktemp("text_data")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(300)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_text_shards([root / "corpus.jsonl"], root / "out", vocab_size=300, val_fraction=0.15, progress=False)
    return root / "out"


def first_batch(dm: TextDataModule, split: str = "train") -> dict[str, torch.Tensor]:
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return next(iter(loader))


def test_batches_are_shifted_packed_rows(prepared: Path) -> None:
    dm = TextDataModule(str(prepared), seq_len=32, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.eod_id == 0 and dm.vocab_size == dm.tokenizer.get_vocab_size()
    batch = first_batch(dm)
    assert set(batch) == {"input_ids", "labels", "seq_ids", "position_ids"}
    for value in batch.values():
        assert value.shape == (4, 32) and value.dtype == torch.int64
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    is_eod = batch["input_ids"] == dm.eod_id
    assert is_eod[:, :-1].any(), "short documents: every row should contain a document boundary"
    after_eod = torch.zeros_like(is_eod)
    after_eod[:, 1:] = is_eod[:, :-1]
    assert (batch["position_ids"][after_eod] == 0).all()
    steps = batch["position_ids"][:, 1:] - batch["position_ids"][:, :-1]
    assert ((steps == 1) | after_eod[:, 1:]).all()
    assert torch.equal(batch["seq_ids"][:, 1:] - batch["seq_ids"][:, :-1], is_eod[:, :-1].long())


def test_train_is_shuffled_by_seed_and_val_is_ordered(prepared: Path) -> None:
    def batches(seed: int, split: str) -> torch.Tensor:
        dm = TextDataModule(str(prepared), seq_len=16, batch_size=2, seed=seed)
        dm.setup("fit")
        return first_batch(dm, split)["input_ids"]

    assert torch.equal(batches(1, "train"), batches(1, "train"))
    assert not torch.equal(batches(1, "train"), batches(2, "train"))
    assert torch.equal(batches(1, "val"), batches(2, "val"))


def test_val_batches_limits_validation(prepared: Path) -> None:
    dm = TextDataModule(str(prepared), seq_len=8, batch_size=2, val_batches=3)
    dm.setup("validate")
    assert len(dm.val_dataloader()) == 3 and len(list(dm.val_dataloader())) == 3
    full = TextDataModule(str(prepared), seq_len=8, batch_size=2)
    full.setup("validate")
    assert len(list(full.val_dataloader())) > 3


def test_train_loader_resumes_where_it_stopped(prepared: Path) -> None:
    dm = TextDataModule(str(prepared), seq_len=16, batch_size=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    iterator = iter(loader)
    seen = [next(iterator)["input_ids"] for _ in range(3)]
    state = loader.state_dict()
    expected = next(iterator)["input_ids"]
    resumed = TextDataModule(str(prepared), seq_len=16, batch_size=2)
    resumed.setup("fit")
    resumed_loader = resumed.train_dataloader()
    resumed_loader.load_state_dict(state)
    assert torch.equal(next(iter(resumed_loader))["input_ids"], expected)
    assert not torch.equal(expected, seen[0])


@pytest.mark.parametrize("missing", ["train", "val", "tokenizer.json"])
def test_incomplete_data_path_names_the_missing_piece(prepared: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken"
    for name in ("train", "val", "tokenizer.json"):
        if name != missing:
            (broken / name).parent.mkdir(parents=True, exist_ok=True)
            target = prepared / name
            (broken / name).symlink_to(target, target_is_directory=target.is_dir())
    with pytest.raises(FileNotFoundError, match=f"missing {missing}.*mm-lightning prepare text"):
        TextDataModule(str(broken)).setup("fit")


def test_seq_len_longer_than_val_split_is_refused(prepared: Path) -> None:
    val_tokens = json.loads((prepared / "prep_summary.json").read_text())["splits"]["val"]["tokens"]
    with pytest.raises(ValueError, match=rf"val split .*\({val_tokens} tokens"):
        TextDataModule(str(prepared), seq_len=val_tokens + 10).setup("fit")


def test_interrupted_demo_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_LIGHTNING_CACHE", str(tmp_path))

    def interrupted(*args, **kwargs):
        (Path(args[1]) / "train").mkdir(parents=True)  # the real prep creates its output folder
        raise KeyboardInterrupt

    monkeypatch.setattr("mm_lightning.demo.corpora.prepare_text_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_lib.ensure_demo_text("demo:sotu")
    assert list((tmp_path / "demo").iterdir()) == []
    with pytest.raises(ValueError, match="demo:sotu"):
        demo_lib.ensure_demo_text("demo:nope")


def test_demo_sotu_builds_into_the_cache(demo_sotu: Path, mm_cache: Path) -> None:
    assert demo_sotu == mm_cache / "demo" / "sotu-v2"
    summary = json.loads((demo_sotu / "prep_summary.json").read_text())
    assert summary["documents"] == 233 and summary["splits"]["val"]["documents"] >= 1
    assert summary["splits"]["train"]["chunks"] >= 100  # a 300-step demo run must see a mix of the whole corpus
    dm = TextDataModule("demo:sotu", seq_len=64, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root == str(demo_sotu) and dm.vocab_size == 8192
    batch = first_batch(dm, "val")
    assert batch["input_ids"].shape == (2, 64)
    assert len(dm.tokenizer.decode(batch["input_ids"][0].tolist())) > 64


def test_captions_demo_shares_the_sotu_tokenizer_and_holds_no_val_captions(demo_sotu: Path) -> None:
    from mm_lightning.demo.corpora import DEMO_IMAGE_TEXTS, DEMO_TEXTS, ensure_demo_text
    from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene

    root = ensure_demo_text("demo:sotu-captions")
    assert (root / "tokenizer.json").read_bytes() == (demo_sotu / "tokenizer.json").read_bytes()
    summary = json.loads((root / "prep_summary.json").read_text())
    assert summary["documents"] == 233 + DEMO_TEXTS["sotu-captions"].caption_documents
    # v6's train/val split, which hashes the mixed file's name: a change of either needs a new version
    assert (summary["splits"]["val"]["documents"], summary["splits"]["val"]["tokens"]) == (2030, 101873)
    config = SceneConfig(vocab_size=DEMO_IMAGE_TEXTS["emoji-scenes"].vocab_size)
    train = {generate_scene(config, "train", i).composition for i in range(200)}
    val = {generate_scene(config, "val", i).composition for i in range(200)}
    assert not train & val  # the text corpus takes train captions only, so val compositions stay unseen
