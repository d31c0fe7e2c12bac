"""Reading a stage's TensorBoard scalars back: what the pipeline's manifest and report are built from.

A stage that was interrupted and resumed writes a second event file into the same folder and logs some steps
again; the later file wins for those steps, so the series read back is the one the finished run stands on.
"""

from __future__ import annotations

import re
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Scalars = dict[str, dict[int, float]]  # tag -> {step: value}

_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+(?:\.\d+)?)\.")


def event_files(log_dir: str | Path) -> list[Path]:
    """The event files directly in ``log_dir``, oldest first (by the time stamp in their names)."""
    files = [path for path in Path(log_dir).glob("events.out.tfevents.*") if _EVENT_FILE.match(path.name)]
    return sorted(files, key=lambda path: (float(_EVENT_FILE.match(path.name).group(1)), path.name))


def read_scalars(log_dir: str | Path) -> Scalars:
    """Every scalar logged in ``log_dir`` as ``{tag: {step: value}}``; a later event file overrides a step."""
    scalars: Scalars = {}
    for path in event_files(log_dir):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series = scalars.setdefault(tag, {})
            series.update({event.step: float(event.value) for event in events.Scalars(tag)})
    return {tag: dict(sorted(series.items())) for tag, series in scalars.items()}


def first_and_last(scalars: Scalars, prefix: str = "val/") -> tuple[dict[str, float], dict[str, float]]:
    """The first and the last logged value of every tag under ``prefix`` (a stage's start and final figures)."""
    first, last = {}, {}
    for tag, series in scalars.items():
        if tag.startswith(prefix) and series:
            steps = list(series)
            first[tag], last[tag] = series[steps[0]], series[steps[-1]]
    return first, last
