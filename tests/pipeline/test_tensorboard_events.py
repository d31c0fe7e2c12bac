"""The demo pipeline's TensorBoard, read back from its event files: image grids and text samples at every validation
of each stage that has them, every scalar on the pipeline-global step, and real FLOP/s in every stage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mm_lightning.eval.caption_grid import DPI, FIGURE_WIDTH_IN
from mm_lightning.pipeline.logs import read_scalars

LLM_LINE = ("text", "joint", "cooldown", "long_context")
"""The stages along one global step count: each continues the global step of the one before."""
MEDIA = {  # stage -> (image tag, text tag, the scalar every validation logs beside them)
    "vit": ("val/probe_retrieval", "val/probe_retrieval_samples", "val/probe_i2t_r@1"),
    **{
        name: ("val/caption_grid", "val/caption_samples", "val/image_use_gap")
        for name in ("align", "joint", "cooldown", "long_context")
    },
}

pytestmark = pytest.mark.slow


def stages(run: Path) -> dict[str, dict]:
    manifest = json.loads((run / "manifest.json").read_text())
    return {entry["name"]: entry for entry in manifest["stages"]}


def media_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("stage", list(MEDIA))
def test_every_validation_of_a_stage_with_a_check_logs_its_image_grid_and_text(short_demo_run: Path, stage: str):
    image_tag, text_tag, scalar_tag = MEDIA[stage]
    validations = list(read_scalars(short_demo_run / stage / "logs")[scalar_tag])  # the one before training included
    events = media_events(short_demo_run / stage / "logs")

    images = events.Images(image_tag)
    assert [image.step for image in images] == validations
    picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert picture.format == "PNG" and picture.width == FIGURE_WIDTH_IN * DPI
    assert len(np.unique(np.asarray(picture.convert("L")))) > 20  # drawn: scenes and text, not a blank canvas
    texts = events.Tensors(f"{text_tag}/text_summary")
    assert [text.step for text in texts] == validations
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| ") and table.count("\n") >= 3  # a header, its rule and at least two rows


def test_every_scalar_sits_on_the_pipeline_global_step(short_demo_run: Path):
    entries = stages(short_demo_run)
    for name, entry in entries.items():
        scalars = read_scalars(short_demo_run / name / "logs")
        start, end = entry["global_step_start"], entry["global_step"]
        outside = {tag: sorted(series) for tag, series in scalars.items() if min(series) < start or max(series) > end}
        assert not outside, f"{name} runs over global steps {start}-{end}; these tags are not: {outside}"
        assert "epoch" not in scalars  # Lightning adds it only to what it logs on its own, stage-local, step
        assert "train/time" in scalars and "validate/time" in scalars, name  # the throughput tags are there too
    for earlier, later in zip(LLM_LINE, LLM_LINE[1:]):
        boundary = entries[earlier]["global_step"]
        assert entries[later]["global_step_start"] == boundary
        scalars = read_scalars(short_demo_run / later / "logs")
        before = {tag: min(series) for tag, series in scalars.items() if min(series) < boundary}
        assert not before, f"{later} logs before {earlier}'s last global step {boundary}: {before}"


def test_flops_per_second_are_real_in_every_stage(short_demo_run: Path):
    for name in stages(short_demo_run):
        series = read_scalars(short_demo_run / name / "logs").get("train/device/flops_per_sec", {})
        assert series and min(series.values()) > 0, f"{name}: {series}"
