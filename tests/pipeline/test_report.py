"""The pipeline report: the pipeline-step axis, the figure written from real event files, and the text summary
with its capability verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from mm_lightning.pipeline.report import (
    _evaluation_group,
    format_duration,
    format_summary,
    stage_offsets,
    to_pipeline_steps,
    write_report,
)


def write_events(log_dir: Path, scalars: dict[str, dict[int, float]]) -> str:
    """Write ``{tag: {step: value}}`` as one TensorBoard event file in ``log_dir``."""
    writer = SummaryWriter(str(log_dir))
    for tag, series in scalars.items():
        for step, value in series.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    return str(log_dir)


def linear(start: int, stop: int, first: float, last: float) -> dict[int, float]:
    """A series going from ``first`` to ``last`` over steps ``start..stop - 1``."""
    return {step: first + (last - first) * (step - start) / (stop - start) for step in range(start, stop)}


def text_stage(tmp_path: Path) -> dict:
    """A text stage of 20 steps from 0, validated at steps 0, 10 and 20."""
    val = {"val/loss": {0: 4.6, 10: 4.0, 20: 3.7}, "val/ppl": {0: 100.0, 10: 60.0, 20: 40.5}}
    train = {"train/lr": linear(0, 20, 1e-4, 1e-3), "train/loss": linear(0, 20, 5.0, 3.0)}
    return {
        "name": "text", "title": "text pre-training", "index": 1, "status": "finished",
        "log_dir": write_events(tmp_path / "text", {**train, **val}),
        "global_step_start": 0, "global_step": 20, "steps": 20, "tokens": 40960, "wall_time_s": 201.3,
        "rope_base": 10000, "seq_len": 128,
        "metric": {"name": "val/ppl", "mode": "min", "start": 100.0, "final": 40.5, "improved": True},
        "start_metrics": {"val/loss": 4.6, "val/ppl": 100.0}, "final_metrics": {"val/loss": 3.7, "val/ppl": 40.5},
    }  # fmt: skip


def vit_stage(tmp_path: Path) -> dict:
    """A ViT CoCa stage counting its own 30 steps from 0, with retrieval recall, caption loss and probe identity."""
    probes = {"val/probe_chance_r@1": 0.015625, "val/probe_colour_only_r@1": 0.015625}
    first = {"val/i2t_r@1": 0.1, "val/t2i_r@1": 0.125, "val/chance_r@1": 0.02, "val/caption": 3.0}
    first |= probes | {"val/probe_i2t_r@1": 0.0125, "val/probe_t2i_r@1": 0.016}
    final = {"val/i2t_r@1": 0.5, "val/t2i_r@1": 0.375, "val/chance_r@1": 0.02, "val/caption": 2.0}
    final |= probes | {"val/probe_i2t_r@1": 0.625, "val/probe_t2i_r@1": 0.5}
    scalars = {tag: {0: first[tag], 30: final[tag]} for tag in first}
    scalars.update({"train/lr": linear(0, 30, 5e-4, 5e-5), "train/loss": linear(0, 30, 8.0, 4.0)})
    return {
        "name": "vit", "title": "ViT CoCa", "index": 2, "status": "finished",
        "log_dir": write_events(tmp_path / "vit", scalars),
        "global_step_start": 0, "global_step": 30, "steps": 30, "tokens": 12000, "wall_time_s": 45.0,
        "rope_base": None, "seq_len": None,
        "metric": {"name": "val/i2t_r@1", "mode": "max", "start": 0.1, "final": 0.5, "improved": True},
        "start_metrics": first, "final_metrics": final,
    }  # fmt: skip


def joint_stage(tmp_path: Path) -> dict:
    """A joint stage continuing the text stage's count (steps 20..30), mixing and logging RoPE and length.

    Its captions name the background colour but not the emoji, and it ignores its images.
    """
    chances = {"val/caption_colour_chance": 0.1, "val/caption_emoji_any_chance": 0.08}
    first = {"val/text_ppl": 40.0, "val/multimodal_loss": 2.5, "val/passkey@64": 0.25, "val/image_use_gap": 0.01}
    first |= chances | {"val/caption_colour_acc": 0.1, "val/caption_emoji_any_acc": 0.05}
    final = {"val/text_ppl": 30.0, "val/multimodal_loss": 2.25, "val/passkey@64": 0.75, "val/image_use_gap": 0.0004}
    final |= chances | {"val/caption_colour_acc": 0.95, "val/caption_emoji_any_acc": 0.02}
    scalars = {tag: {20: first[tag], 30: final[tag]} for tag in first}
    scalars.update({"train/lr": linear(20, 30, 1e-3, 1e-4), "train/loss": linear(20, 30, 3.5, 3.0)})
    scalars.update({"mix/scheduled_share": linear(20, 30, 0.0, 0.5), "mix/multimodal_share_samples": {22: 0.25}})
    scalars.update({"train/rope_base": {20: 10000.0, 25: 80000.0}, "train/seq_len": {20: 128.0, 25: 512.0}})
    return {
        "name": "joint", "title": "joint pre-training", "index": 3, "status": "finished",
        "log_dir": write_events(tmp_path / "joint", scalars),
        "global_step_start": 20, "global_step": 30, "steps": 10, "tokens": 20480, "wall_time_s": 60.0,
        "rope_base": 80000, "seq_len": 512,
        "metric": {"name": "val/text_ppl", "mode": "min", "start": 40.0, "final": 30.0, "improved": True},
        "start_metrics": first, "final_metrics": final,
    }  # fmt: skip


def pending_stage(name: str, index: int) -> dict:
    """A stage the pipeline has not reached: no logs and no figures."""
    return {"name": name, "title": f"{name} stage", "index": index, "status": "pending"}


def manifest_of(stages: list[dict]) -> dict:
    """A manifest of ``stages`` in run order."""
    return {"pipeline": "tiny", "pipeline_file": "pipelines/tiny.yaml", "run_dir": "runs/tiny", "stages": stages}


def test_stage_offsets_lay_stages_end_to_end():
    stages = [{"steps": 20}, {"steps": 30}, {"global_step_start": 20, "global_step": 30}, pending_stage("long", 4)]
    assert stage_offsets(manifest_of(stages)) == [0, 20, 50, 60]


def test_to_pipeline_steps_shifts_a_stage_to_its_offset():
    # the joint stage counts 20..30 and starts at pipeline step 50 (after 20 text and 30 ViT steps)
    xs, ys = to_pipeline_steps({20: 4.0, 25: 3.5, 30: 3.0}, start=20, offset=50)
    assert xs == [50, 55, 60]
    assert ys == [4.0, 3.5, 3.0]


def test_stage_offsets_size_a_stage_without_steps_from_its_logs():
    stages = [{"status": "failed"}, {"steps": 5}]
    logged = [{"train/loss": {300: 1.0, 312: 0.9}, "train/time": {0: 1.0, 99: 2.0}}, {}]
    assert stage_offsets(manifest_of(stages), logged) == [0, 12]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "n/a"), (4.4, "4 s"), (59.6, "1 min 0 s"), (201.3, "3 min 21 s"), (7500.0, "2 h 05 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_write_report_draws_the_run_and_summarises_it(tmp_path: Path):
    manifest = manifest_of([text_stage(tmp_path), vit_stage(tmp_path), joint_stage(tmp_path)])

    figure, summary = write_report(manifest, tmp_path / "report")

    assert figure == tmp_path / "report" / "report.png"
    height, width, _ = imread(figure).shape
    assert (width, height) == (12 * 110, 14 * 110)
    text = summary.read_text()
    assert text == format_summary(manifest)
    assert "1. text pre-training [text]: finished" in text
    assert "steps 20 (global step 0 -> 20), tokens 40,960, wall time 3 min 21 s" in text
    assert "val/ppl (min): 100 -> 40.5, better" in text
    assert "val/i2t_r@1 (max): 0.1 -> 0.5, better" in text
    assert "retrieval recall: i2t_r@1 0.1 -> 0.5, t2i_r@1 0.125 -> 0.375, chance_r@1 0.02" in text
    assert "caption quality: caption 3 -> 2" in text
    assert "steps 10 (global step 20 -> 30)" in text
    assert "perplexity: text_ppl 40 -> 30" in text
    assert "passkey accuracy: passkey@64 0.25 -> 0.75" in text
    assert "probe_" not in text.split("capability")[0]  # the probe figures are listed with the checks only
    vit_block = [
        "   capability: PASS (2 of 2 checks pass)",
        "      PASS emoji identity i2t r@1 0.625 (chance 0.01562, colour-only 0.01562, start 0.0125; "
        "needs > 2x chance, > colour-only, > start)",
    ]
    assert "\n".join(vit_block) in text
    joint_block = [
        "   capability: FAIL (2 of 4 checks pass)",
        "      FAIL image-use gap 0.0004 nats (start 0.01; needs > 0.05): the model ignores its images",
        "      PASS captions naming background colour 0.95 (chance 0.1, start 0.1; needs > chance)",
        "      FAIL captions naming at least one emoji 0.02 (chance 0.08, start 0.05; needs > chance): "
        "the captions name the scene's emoji no more often than chance",
        "      PASS passkey@64 0.75 (start 0.25; needs > start)",  # 128 -> 512 tokens: a long-context stage
    ]
    assert "\n".join(joint_block) in text
    assert "1. text pre-training [text]: finished" in text and "capability" not in text.split("2. ViT")[0]
    totals = [
        "Total: 3 of 3 stages run, tokens 73,440, wall time 5 min 6 s",
        "Capability checks: 1 of 2 checked stages pass; failing: joint (image-use gap, captions naming at least "
        "one emoji)",
        "Headline metrics (secondary: perplexity, loss, recall): 3 of 3 stages beat their start",
    ]
    assert text.rstrip().endswith("\n".join(totals))


def test_summary_says_worse_when_the_metric_moved_the_wrong_way():
    stage = {"name": "cool", "index": 1, "status": "finished", "steps": 5, "global_step_start": 0, "global_step": 5}
    stage["metric"] = {"name": "val/text_ppl", "mode": "min", "start": 30.0, "final": 31.0, "improved": False}
    text = format_summary(manifest_of([stage]))
    assert "val/text_ppl (min): 30 -> 31, worse" in text
    assert "Capability checks: none recorded; the stages are judged by their headline metrics alone" in text
    assert "0 of 1 stages beat their start" in text


def test_unfinished_and_unlogged_stages_are_reported_without_crashing(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_events = text_stage(tmp_path) | {"log_dir": str(empty)}
    missing = vit_stage(tmp_path) | {"log_dir": str(tmp_path / "gone")}
    stopped = {"name": "joint", "title": "joint pre-training", "index": 4, "status": "stopped", "wall_time_s": 12.0}
    stopped |= {"problem": "out of memory", "log_dir": str(tmp_path / "joint")}
    manifest = manifest_of([no_events, missing, pending_stage("long", 3), stopped])

    figure, summary = write_report(manifest, tmp_path / "report")

    assert imread(figure).shape[:2] == (14 * 110, 12 * 110)
    text = summary.read_text()
    assert "3. long stage [long]: not run (pending)" in text
    assert "4. joint pre-training [joint]: stopped (out of memory), wall time 12 s, no figures yet" in text
    assert "Total: 2 of 4 stages run" in text


def test_named_validation_sets_are_summarised_with_their_kind():
    assert _evaluation_group("val/text_ppl_sotu") == _evaluation_group("val/ppl") == "perplexity"
    assert _evaluation_group("val/text_ppl_long_text_32k+replay_text_32k") == "perplexity"
    assert _evaluation_group("val/multimodal_loss_scenes") == _evaluation_group("val/caption") == "caption quality"
    assert _evaluation_group("val/text_loss_sotu") is None  # the perplexity says it


def test_the_total_gives_the_pipelines_own_time_when_stages_ran_side_by_side():
    stages = [{"name": name, "index": i, "status": "finished", "steps": 5, "global_step_start": 0, "global_step": 5,
               "wall_time_s": 300.0} for i, name in enumerate(("text", "vit"), start=1)]  # fmt: skip
    alone = format_summary(manifest_of(stages) | {"wall_time_s": 601.0})  # one after the other
    assert "wall time 10 min 0 s\n" in alone
    side_by_side = format_summary(manifest_of(stages) | {"wall_time_s": 310.0})
    assert "wall time 5 min 10 s (the stages' own 10 min 0 s summed: some ran side by side)" in side_by_side
