"""The mixture datamodule of the joint stages: the quota rule, pure source choice, exact resume and packing."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mm_lightning.data.mixture.packing import mixture_stats, pack_samples, tokens_per_image
from mm_lightning.data.mixture.plan import (
    MixSample,
    MixturePlan,
    ShareSchedule,
    cumulative_share,
    epoch_item,
    floor_sum,
    is_multimodal,
    multimodal_count,
    permute_index,
    scheduled_share,
)
from mm_lightning.data.mixture.sources import (
    SourceContext,
    SourceSpec,
    TextTokenSource,
    build_source,
    register_source,
    source_kind,
)
from mm_lightning.data.mixture_datamodule import MixtureDataModule
from mm_lightning.errors import ConfigError
from mm_lightning.losses.next_token import IGNORE_INDEX
from mm_lightning.tokenizer import IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, PAD_ID

PATCH = 2  # patch side of the fake images: 12 features per patch


class FakeSource:
    """Deterministic samples that say which source and counter they came from (tokens 5.. only, no EOD)."""

    def __init__(self, name: str, multimodal: bool, items: int):
        self.name, self.multimodal, self.items = name, multimodal, items

    def __len__(self) -> int:
        return self.items

    def sample(self, k: int) -> MixSample:
        item = epoch_item(k, self.items, 0, self.name)
        text = [5 + len(self.name), 5 + item % 50, 5 + (k % 7)] * (1 + item % 3)
        if not self.multimodal:
            return MixSample(token_ids=text, source=self.name)
        grid = (1 + item % 3, 2 + item % 4)
        patches = torch.full((grid[0] * grid[1], 3 * PATCH * PATCH), float(item))
        ids = [IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID, *text, 0]
        return MixSample(ids, [(patches, grid)], [False] * 3 + [True] * (len(text) + 1), self.name)


def _build_fake(multimodal: bool):
    def build(spec: SourceSpec, context: SourceContext) -> FakeSource:
        return FakeSource(spec.name, multimodal, int(spec.options.get("items", 37)))

    return build


for _kind, _flag in (("fake_text", False), ("fake_image", True)):
    try:
        source_kind(_kind)
    except ConfigError:
        register_source(_kind, multimodal=_flag)(_build_fake(_flag))

FAKE_SOURCES = [
    {"name": "prose", "kind": "fake_text", "path": "-", "weight": 3.0},
    {"name": "code", "kind": "fake_text", "path": "-", "weight": 1.0, "items": 11},
    {"name": "captions", "kind": "fake_image", "path": "-", "weight": 2.0},
    {"name": "charts", "kind": "fake_image", "path": "-", "weight": 1.0, "items": 5},
]


def fake_datamodule(**kwargs) -> MixtureDataModule:
    options = dict(sources=FAKE_SOURCES, share=ShareSchedule(0.0, 0.5, 40, "linear"), seq_len=32,
                   samples_per_batch=6, patch_size=PATCH, seed=3)  # fmt: skip
    options.update(kwargs)
    dm = MixtureDataModule(**options)
    dm.setup("fit")
    return dm


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] is None and b[key] is None) or torch.equal(a[key], b[key]), key


# -- the share schedule and the quota rule ---------------------------------------------------------------------------


def test_floor_sum_and_cumulative_share_are_exact() -> None:
    for n, m, a, b in ((0, 3, 2, 1), (17, 5, 3, 2), (100, 7, 11, 0), (64, 64, 4, 63)):
        assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))
    for schedule in (ShareSchedule(0.1, 0.7, 50, "linear"), ShareSchedule(0.2, 0.6, 45, "step", steps=4),
                     ShareSchedule(0.9, 0.3, 0, "constant"), ShareSchedule(0.0, 1.0, 0, "linear")):  # fmt: skip
        total = 0.0
        for index in range(120):
            assert cumulative_share(schedule, index) == pytest.approx(total, abs=1e-9)
            total += scheduled_share(schedule, index)
    step = ShareSchedule(0.2, 0.6, 40, "step", steps=4)
    assert [scheduled_share(step, i) for i in (0, 9, 10, 39, 40, 1000)] == pytest.approx([0.2, 0.2, 0.3, 0.5, 0.6, 0.6])


@pytest.mark.parametrize(
    "schedule",
    [
        ShareSchedule(0.0, 0.4, 3000, "linear"),
        ShareSchedule(0.1, 0.5, 2000, "step", steps=4),
        ShareSchedule(0.0, 0.37, 0, "constant"),
    ],
)
def test_quota_rule_holds_every_window_of_100_samples(schedule: ShareSchedule) -> None:
    for seed in (0, 1):
        counts = [multimodal_count(schedule, i, seed) for i in range(4101)]
        flags = [is_multimodal(schedule, i, seed) for i in range(4100)]
        assert [counts[i + 1] - counts[i] for i in range(4100)] == flags  # the count is the running sum of flags
        for start in range(0, 4001):
            realised = (counts[start + 100] - counts[start]) / 100
            scheduled = (cumulative_share(schedule, start + 100) - cumulative_share(schedule, start)) / 100
            assert abs(realised - scheduled) <= 0.01 + 1e-9, (seed, start)  # the must-hold is 0.02
    assert [multimodal_count(schedule, 777, s) for s in range(8)] != [multimodal_count(schedule, 777, 0)] * 8 or (
        schedule.shape == "constant"
    )


def test_quota_rule_is_exact_far_into_a_stage() -> None:
    schedule = ShareSchedule(0.0, 0.4, 10**12, "step", steps=4)  # stairs of 0.25e12 samples at 0, 0.1, 0.2, 0.3
    index = 7 * 10**11 + 12345
    expected = Fraction(1, 10) * 25 * 10**10 + Fraction(2, 10) * (2 * 10**11 + 12345)
    assert abs(cumulative_share(schedule, index) - float(expected)) < 1e-3 * float(expected) * 1e-6
    steps = [multimodal_count(schedule, index + j + 1, 5) - multimodal_count(schedule, index + j, 5) for j in range(50)]
    assert sum(steps) == 10  # one sample in five at share 0.2


# -- the choice of source and item -----------------------------------------------------------------------------------


def test_permutations_are_bijections_and_change_per_epoch() -> None:
    for n in (1, 2, 7, 100, 1000):
        assert sorted(permute_index(i, n, 99) for i in range(n)) == list(range(n))
    first, second = [epoch_item(k, 50, 1, "a") for k in range(50)], [epoch_item(k, 50, 1, "a") for k in range(50, 100)]
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    assert [epoch_item(k, 50, 1, "a", shuffle=False) for k in range(60)] == list(range(50)) + list(range(10))


def test_plan_counters_are_exact_and_weighted() -> None:
    plan = fake_datamodule().plan()
    picks = [plan.pick(i) for i in range(3000)]
    per_source: dict[int, list[int]] = {}
    for pick in picks:
        per_source.setdefault(pick.source, []).append(pick.k)
        assert pick.multimodal == plan.multimodal[pick.source]
    for source, ks in per_source.items():
        assert ks == list(range(len(ks))), plan.names[source]  # each source's counter counts up, nothing skipped
    text = len(per_source[0]) + len(per_source[1])
    images = len(per_source[2]) + len(per_source[3])
    assert abs(len(per_source[0]) - 0.75 * text) <= 2 and abs(len(per_source[2]) - images * 2 / 3) <= 2
    again = MixturePlan(plan.names, plan.weights, plan.multimodal, plan.schedule, plan.seed)
    assert [again.pick(i) for i in range(2999, -1, -7)] == picks[::-7]  # any order, any object: same answer
    other = MixturePlan(plan.names, plan.weights, plan.multimodal, plan.schedule, plan.seed + 1)
    assert [other.pick(i) for i in range(300)] != picks[:300]


def test_batches_do_not_depend_on_workers_or_ranks() -> None:
    dm = fake_datamodule()
    alone = list(DataLoader(dm.batches("train", 0, 6), batch_size=None, num_workers=0))
    workers = list(DataLoader(dm.batches("train", 0, 6), batch_size=None, num_workers=2))
    assert_same_batches(alone, workers)
    assert torch.equal(torch.cat([b["sample_index"] for b in alone]), torch.arange(36))
    # two ranks of 3 samples a batch share out the same 36 samples: same index -> same source and same tokens
    per_rank = []
    for rank in range(2):
        wide = fake_datamodule(samples_per_batch=3, train_batches=6)
        wide.trainer = FakeTrainer(global_step=0, rank=rank, world_size=2)
        per_rank += list(wide.train_dataloader())
    assert describe_samples(per_rank) == describe_samples(alone)


def describe_samples(batches: list[dict]) -> dict[int, tuple[int, int]]:
    """Sample index -> (source, positions), over all batches."""
    return {
        int(i): (int(s), int(t))
        for b in batches
        for i, s, t in zip(b["sample_index"], b["sample_source"], b["sample_tokens"])
    }


# -- resume ----------------------------------------------------------------------------------------------------------


class FakeTrainer:
    """What the datamodule reads from a trainer."""

    def __init__(self, global_step: int, accumulate: int = 1, rank: int = 0, world_size: int = 1):
        self.global_step, self.accumulate_grad_batches = global_step, accumulate
        self.global_rank, self.world_size = rank, world_size


def test_restarted_datamodule_yields_the_uninterrupted_batches() -> None:
    whole = list(fake_datamodule(train_batches=8).train_dataloader())
    assert_same_batches(list(fake_datamodule(train_batches=8, start_step=5).train_dataloader()), whole[5:])
    first = fake_datamodule(train_batches=8)
    first.trainer = FakeTrainer(global_step=100)  # this stage starts at global step 100 of the LLM's line
    first.set_share_schedule({"start": 0.0, "end": 0.5, "ramp_samples": 40})
    assert_same_batches(list(first.train_dataloader()), whole)
    state = first.state_dict()
    resumed = fake_datamodule(train_batches=8, share=ShareSchedule(0.9, 0.9, 0, "constant"), num_workers=2)
    resumed.load_state_dict(state)
    resumed.trainer = FakeTrainer(global_step=103)
    assert_same_batches(list(resumed.train_dataloader()), whole[3:])


class RecordSamples(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["sample_index"].tolist())
        return (self.weight * batch["input_ids"].float().mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_resume_sees_the_uninterrupted_samples(tmp_path: Path) -> None:
    def fit(max_steps: int, ckpt_path: str | None = None) -> list[list[int]]:
        module = RecordSamples()
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                            callbacks=[L.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=3,
                                                                             save_top_k=-1)])  # fmt: skip
        trainer.fit(module, datamodule=fake_datamodule(), ckpt_path=ckpt_path)
        return module.seen

    uninterrupted = fit(6)
    checkpoint = next(tmp_path.glob("*step=3*.ckpt"))
    resumed = fit(6, str(checkpoint))
    assert len(uninterrupted) == 6 and resumed == uninterrupted[3:]
    assert [index for batch in uninterrupted for index in batch] == list(range(36))


# -- packing ---------------------------------------------------------------------------------------------------------


def image_sample(grid: tuple[int, int], text: list[int], value: float) -> MixSample:
    patches = torch.full((grid[0] * grid[1], 3 * PATCH * PATCH), value)
    ids = [IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID, *text]
    return MixSample(ids, [(patches, grid)], [False] * 3 + [True] * len(text), "img")


def test_packing_layout_labels_and_image_order() -> None:
    text = MixSample([5, 6, 0, 7, 8, 9], source="txt")  # two documents: EOD after 6
    wide = image_sample((3, 5), [10, 11, 0], 1.0)  # 2 x 3 = 6 tokens -> 11 ids, 10 positions
    small = image_sample((1, 1), [12, 0], 2.0)  # 1 token -> 5 ids, 4 positions
    batch = pack_samples([text, wide, small], seq_len=12, merge_factor=2)
    # first-fit: text (5) -> row 0, wide (10) -> row 1, small (4) -> row 0 after text
    assert batch["input_ids"].shape == (2, 12) and batch["sample_tokens"].tolist() == [5, 10, 4]
    assert batch["input_ids"][0].tolist() == [5, 6, 0, 7, 8, 3, 2, 4, 12, 1, 1, 1]
    assert batch["labels"][0].tolist() == [6, 0, 7, 8, 9, -100, -100, 12, 0, -100, -100, -100]
    assert batch["seq_ids"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert batch["input_ids"][1].tolist() == [3] + [2] * 6 + [4, 10, 11, 1, 1]
    assert batch["labels"][1].tolist() == [-100] * 7 + [10, 11, 0, -100, -100]
    # images in the reading order of their placeholders: row 0's small image before row 1's wide one
    assert batch["grid_hw"].tolist() == [[1, 1], [3, 5]] and batch["patches"].shape == (1, 16, 12)
    assert batch["patches"][0, 0, 0] == 2.0 and batch["patch_seq_ids"][0].tolist() == [0] + [1] * 15
    runs = [tokens_per_image(tuple(g), 2) for g in batch["grid_hw"].tolist()]
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == sum(runs)
    assert (batch["labels"][batch["input_ids"] == PAD_ID] == IGNORE_INDEX).all()
    assert not (batch["labels"] == IMAGE_ID).any()


def test_a_packed_sample_equals_the_sample_alone() -> None:
    dm = fake_datamodule(seq_len=40)
    samples = [dm.sources()[p.source].sample(p.k) for p in map(dm.plan().pick, range(30))]
    packed = pack_samples(samples, 40)
    rows = packed["input_ids"].shape[0]
    assert rows < len(samples)  # several samples share rows
    found = 0
    for sample in samples:
        alone = pack_samples([sample], 40)
        n = int(alone["sample_tokens"][0])
        ids, labels = alone["input_ids"][0, :n], alone["labels"][0, :n]
        for r in range(rows):
            for start in range(40 - n + 1):
                window = slice(start, start + n)
                same_labels = torch.equal(packed["labels"][r, window], labels)
                if torch.equal(packed["input_ids"][r, window], ids) and same_labels:
                    assert torch.equal(packed["position_ids"][r, window], alone["position_ids"][0, :n])
                    found += 1
                    break
            else:
                continue
            break
    assert found == len(samples)


def test_truncation_fixed_rows_and_errors() -> None:
    long_text = MixSample(list(range(5, 30)), source="txt")  # 24 positions
    batch = pack_samples([long_text], seq_len=10)
    assert batch["input_ids"][0].tolist() == list(range(5, 15)) and batch["sample_truncated"].tolist() == [14]
    assert batch["patches"] is None and batch["grid_hw"] is None and batch["patch_seq_ids"] is None
    late_image = image_sample((8, 8), [7], 0.0)  # 16 image tokens, cannot fit 10 positions
    with pytest.raises(ConfigError, match=r"sample 0 from 'img' needs 18 positions.*seq_len=10"):
        pack_samples([late_image], seq_len=10)
    fixed = pack_samples([MixSample([5, 6, 7])], seq_len=8, rows_per_batch=3)
    assert fixed["input_ids"].shape == (3, 8) and (fixed["labels"][1:] == IGNORE_INDEX).all()
    with pytest.raises(ConfigError, match="rows_per_batch=1"):
        pack_samples([MixSample([5] * 8), MixSample([6] * 8)], seq_len=8, rows_per_batch=1)


def test_batches_log_their_share_in_samples_and_tokens() -> None:
    dm = fake_datamodule(share=ShareSchedule(0.5, 0.5, 0, "constant"))
    stats = mixture_stats(dm.batches("train", 0, 1).batch(0))
    assert stats["mix/multimodal_share_samples"] == 0.5 and 0 < stats["mix/multimodal_share_tokens"] < 1


# -- configuration errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sources": []}, "sources is empty"),
        ({"sources": [{"name": "x", "kind": "videos?", "path": "-"}]}, "unknown mixture source kind 'videos\\?'"),
        ({"sources": [{"name": "x", "path": "-"}]}, "lacks kind"),
        ({"share": ShareSchedule(0.0, 0.4)}, None),
        ({"sources": FAKE_SOURCES[:2]}, "no source is multimodal"),
        ({"sources": FAKE_SOURCES[2:], "share": ShareSchedule(0.5, 1.0)}, "no source is text"),
        ({"sources": [*FAKE_SOURCES[:1], {**FAKE_SOURCES[2], "weight": 0}]}, "weight=0.0 must be > 0"),
        ({"sources": FAKE_SOURCES + FAKE_SOURCES[:1]}, "names must be unique"),
        ({"seq_len": 1}, "seq_len=1"),
    ],
)
def test_bad_configs_raise_config_errors(changes: dict, message: str | None) -> None:
    if message is None:
        fake_datamodule(**changes)
        return
    with pytest.raises(ConfigError, match=message):
        fake_datamodule(**changes)


def test_share_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"end=1.2 is outside \[0, 1\]"):
        ShareSchedule(0.0, 1.2)
    dm = fake_datamodule()
    with pytest.raises(ConfigError, match=r"start=-0.1"):
        dm.set_share_schedule({"start": -0.1})
    with pytest.raises(ConfigError, match="shape 'cosine'"):
        ShareSchedule(shape="cosine")


# -- the real text and image-text sources ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny text shards (with their tokenizer) and image-caption shards tokenized with it."""
    from mm_lightning.demo.emoji_scenes import SceneConfig, generate_scene, render_scene
    from mm_lightning.prep.image_text import prepare_image_text_shards
    from mm_lightning.prep.text import prepare_text_shards

    root = tmp_path_factory.mktemp("mixture_data")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(200)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_text_shards([root / "corpus.jsonl"], root / "text", vocab_size=300, val_fraction=0.15, num_workers=1,
                        progress=False)  # fmt: skip
    (root / "raw").mkdir()
    rows, config = [], SceneConfig(vocab_size=16)
    for i in range(12):
        render_scene(generate_scene(config, "train", i)).save(root / "raw" / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": generate_scene(config, "train", i).caption}))
    (root / "raw" / "captions.jsonl").write_text("\n".join(rows) + "\n")
    prepare_image_text_shards([root / "raw"], root / "pairs", val_fraction=0.25, num_workers=1, progress=False,
                              tokenizer=root / "text" / "tokenizer.json")  # fmt: skip
    return root


def test_real_text_and_image_text_sources(prepared: Path) -> None:
    sources = [{"name": "text", "kind": "text", "path": str(prepared / "text"), "text_len": 17},
               {"name": "captions", "kind": "image_text", "path": str(prepared / "pairs")}]  # fmt: skip
    dm = MixtureDataModule(sources, ShareSchedule(0.5, 0.5, 0, "constant"), seq_len=64, samples_per_batch=4,
                           patch_size=14, max_patches=16, seed=1, val_batches=2)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == dm.tokenizer.get_vocab_size()
    text, captions = dm.sources()
    assert len(text.sample(0).token_ids) == 17 and 0 in [t for k in range(20) for t in text.sample(k).token_ids]
    pair = captions.sample(0)
    assert pair.token_ids[:3] == [IMAGE_START_ID, IMAGE_ID, IMAGE_END_ID] and pair.token_ids[-1] == 0
    assert pair.loss_mask == [False] * 3 + [True] * (len(pair.token_ids) - 3)
    assert " " in dm.tokenizer.decode(pair.token_ids[3:-1]) and pair.images[0][0].shape[1] == 3 * 14 * 14
    batch = next(iter(dm.train_dataloader()))
    assert batch["sample_multimodal"].sum() == 2 and batch["grid_hw"].shape == (2, 2)
    n_tokens = sum(tokens_per_image(tuple(g), 2) for g in batch["grid_hw"].tolist())
    assert int((batch["input_ids"] == IMAGE_ID).sum()) == n_tokens
    assert batch["patches"].shape == (1, int(batch["grid_hw"].prod(1).sum()), 3 * 14 * 14)
    dm.num_workers = 2
    assert_same_batches(list(dm.batches("train", 0, 3)), list(DataLoader(dm.batches("train", 0, 3), batch_size=None,
                                                                         num_workers=2)))  # fmt: skip
    assert dm.val_groups == ["text", "multimodal"]  # held-out text alone (perplexity), multimodal alone
    assert dm.val_set_names == ["text", "captions"]  # what each validates on: the stages' tags carry it
    text_val, mm_val = (list(loader) for loader in dm.val_dataloader())
    assert len(text_val) == len(mm_val) == 2 and all(int(v["input_ids"].shape[1]) == 64 for v in text_val + mm_val)
    assert all(v["patches"] is None and not v["sample_multimodal"].any() for v in text_val)
    assert all(v["sample_multimodal"].all() for v in mm_val)
    assert_same_batches(text_val + mm_val, [b for loader in dm.val_dataloader() for b in loader])


def test_a_text_source_restates_training_blocks_only(prepared: Path) -> None:
    def text_source(split: str, **options) -> TextTokenSource:
        spec = SourceSpec.from_config({"name": "text", "kind": "text", "path": str(prepared / "text"), "text_len": 33,
                                       **options})  # fmt: skip
        return build_source(spec, SourceContext(split, seed=1, seq_len=64, patch_size=14, max_patches=16))

    plain, restated = text_source("train"), text_source("train", repeat_share=1.0, repeat_span=[4, 16])
    for k in range(6):
        block, said_again = plain.sample(k).token_ids, restated.sample(k).token_ids
        cut = next(m for m in range(4, 17) if said_again == block[:m] + block[: 33 - m])  # StopIteration: not one
        assert 4 <= cut <= 16
    assert [text_source("val", repeat_share=1.0).sample(k).token_ids for k in range(3)] == [
        text_source("val").sample(k).token_ids for k in range(3)
    ]  # validation text stays the corpus's
    with pytest.raises(ConfigError, match="source 'text': repeat_span"):
        text_source("train", repeat_share=0.5, repeat_span=[4, 17])


def test_yaml_config_builds_the_datamodule() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MixtureDataModule, "data")
    config = parser.parse_string(
        """
        data:
          sources:
            - {name: prose, kind: fake_text, path: "-", weight: 2.0, items: 9}
            - {name: captions, kind: fake_image, path: "-"}
          share: {start: 0.1, end: 0.4, ramp_samples: 200, shape: step}
          seq_len: 48
        """
    )
    dm = parser.instantiate(config).data
    assert dm.share == ShareSchedule(0.1, 0.4, 200, "step") and dm.specs[0].options == {"items": 9}
    assert dm.state_dict()["share"]["shape"] == "step"


def test_each_validation_group_is_named_by_its_sources() -> None:
    """The joint stages tag their validation metrics with these names (``val/text_ppl_long+replay``)."""
    sources = [{"name": "text", "kind": "text", "path": "demo:sotu"},
               {"name": "scenes", "kind": "image_text", "path": "demo:emoji-scenes"}]  # fmt: skip
    val = [{"name": "long", "kind": "text", "path": "demo:sotu"}, {"name": "scenes", "kind": "image_text",
           "path": "demo:emoji-scenes"}, {"name": "replay", "kind": "text", "path": "demo:sotu-captions"}]  # fmt: skip
    assert MixtureDataModule(sources, val_sources=val).val_set_names == ["long+replay", "scenes"]
    assert MixtureDataModule(sources, val_sources=val[:1]).val_set_names == ["long"]
    assert MixtureDataModule(sources).val_set_names == ["text", "scenes"]  # no val_sources: the training sources
