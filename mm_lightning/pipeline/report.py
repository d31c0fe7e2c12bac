"""The end-of-pipeline report: one figure of the whole run and a short text summary of every stage.

A pipeline runs the stages of the Kimi-VL recipe (text pre-training, ViT CoCa, alignment, joint pre-training,
joint cooldown, long context) one after another and records them in a manifest (see ``mm_lightning.pipeline.runner``).
Each stage counts its own global step (the joint stages continue the text stage's count, the others start at
0), so the figure lays the stages end to end on one axis, the *pipeline step*::

    x = offset_i + (step - global_step_start_i),    offset_i = sum of the steps of the stages before i

The figure stacks the schedules the recipe changes between stages (learning rate, multimodal share, RoPE
base, sequence length) over the train and validation losses, so every hand-off can be seen at a glance. The
summary judges each stage by its capability checks (:mod:`~mm_lightning.pipeline.verdict`), its headline second.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter

from mm_lightning.pipeline.logs import Scalars, read_scalars
from mm_lightning.pipeline.verdict import Check, format_checks, format_verdict_totals, pipeline_checks

Stage = dict[str, Any]

PLOTTED_TRAIN_TAGS = ("train/lr", "train/loss", "train/rope_base", "train/seq_len", "mix/scheduled_share")
LEFT, RIGHT = 0.08, 0.97  # the panels' horizontal extent, as fractions of the figure width
EVALUATION_GROUPS = ("perplexity", "retrieval recall", "caption quality", "passkey accuracy", "copying")


def _wrap_items(head: str, items: Sequence[str], width: int, separator: str, indent: str = "") -> list[str]:
    """``head`` followed by ``items`` joined with ``separator``, filled into lines without breaking an item."""
    lines = [head + items[0]]
    for item in items[1:]:
        if len(lines[-1]) + len(separator) + len(item) > width:
            lines[-1] += separator.rstrip()
            lines.append(indent + item)
        else:
            lines[-1] += separator + item
    return lines


def format_duration(seconds: float | None) -> str:
    """A wall time in words: ``"45 s"``, ``"3 min 21 s"``, ``"2 h 05 min"``; ``"n/a"`` when unknown."""
    if seconds is None:
        return "n/a"
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


# ---------------------------------------------------------------------------------------------------------------
# The pipeline-step axis
# ---------------------------------------------------------------------------------------------------------------


def _plotted_steps(scalars: Scalars | None) -> list[int]:
    """The steps at which a stage logged any of the plotted train tags or a validation figure."""
    scalars = scalars or {}
    tags = [tag for tag in scalars if tag in PLOTTED_TRAIN_TAGS or tag.startswith("val/")]
    return sorted({step for tag in tags for step in scalars[tag]})


def stage_start(stage: Stage, scalars: Scalars | None = None) -> int:
    """The global step a stage started from: the manifest's, else the first step it logged, else 0."""
    if stage.get("global_step_start") is not None:
        return int(stage["global_step_start"])
    logged = _plotted_steps(scalars)
    return logged[0] if logged else 0


def stage_width(stage: Stage, scalars: Scalars | None = None) -> int:
    """How many pipeline steps a stage spans: its ``steps``, else what its logs reach, else 0 (not run)."""
    if stage.get("steps") is not None:
        return int(stage["steps"])
    start = stage_start(stage, scalars)
    if stage.get("global_step") is not None:
        return int(stage["global_step"]) - start
    logged = _plotted_steps(scalars)
    return logged[-1] - start if logged else 0


def stage_offsets(manifest: dict, scalars: Sequence[Scalars | None] | None = None) -> list[int]:
    """The pipeline step at which each stage begins: the summed widths of the stages run before it.

    Args:
        manifest: the pipeline manifest, stages in run order.
        scalars: optionally each stage's logged scalars, to size stages whose manifest entry has no ``steps``.
    """
    stages = manifest["stages"]
    scalars = scalars or [None] * len(stages)
    widths = [stage_width(stage, logged) for stage, logged in zip(stages, scalars)]
    return [0, *accumulate(widths)][: len(stages)]


def to_pipeline_steps(series: dict[int, float], start: int, offset: int) -> tuple[list[int], list[float]]:
    """A stage's ``{step: value}`` series as ``(pipeline steps, values)``: ``x = offset + step - start``."""
    return [offset + step - start for step in series], list(series.values())


# ---------------------------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------------------------


def read_stage_scalars(manifest: dict) -> list[Scalars]:
    """Each stage's TensorBoard scalars; ``{}`` for a stage without a log folder or with no event files."""
    logs = []
    for stage in manifest["stages"]:
        log_dir = stage.get("log_dir")
        logs.append(read_scalars(log_dir) if log_dir and Path(log_dir).is_dir() else {})
    return logs


class _Placed:
    """One stage placed on the pipeline-step axis: its manifest entry, scalars, start step and offset."""

    def __init__(self, stage: Stage, scalars: Scalars, offset: int):
        self.stage, self.scalars, self.offset = stage, scalars, offset
        self.start = stage_start(stage, scalars)
        self.width = stage_width(stage, scalars)

    def series(self, tag: str) -> tuple[list[int], list[float]]:
        """The tag's values against pipeline steps (empty when the stage did not log it)."""
        return to_pipeline_steps(self.scalars.get(tag, {}), self.start, self.offset)

    @property
    def label(self) -> str:
        """``"<index> <title>"``, as the stage is named in the figure."""
        return f"{self.stage.get('index', '')} {self.stage.get('title') or self.stage.get('name', '')}".strip()


def _stage_labels(placed: list[_Placed], axes_width_in: float, fontsize: float = 9) -> list[tuple[str, float]]:
    """Each stage's label and height above the top panel: the full label where it fits, else its index alone.

    Index-only labels of neighbouring narrow stages alternate between two heights so they do not collide.
    """
    total = max(placed[-1].offset + placed[-1].width, 1)
    char_in = 0.6 * fontsize / 72  # about one character's width in inches
    low, high = 1.02, 1.12  # in axes fractions above the top panel
    labels, last_short_height = [], None
    for item in placed:
        if len(item.label) * char_in < 0.95 * item.width / total * axes_width_in:
            labels.append((item.label, low))
            last_short_height = None
        else:
            last_short_height = high if last_short_height == low else low
            labels.append((str(item.stage.get("index", "?")), last_short_height))
    return labels


def _draw_stage_bands(axes: Sequence[Any], placed: list[_Placed], axes_width_in: float) -> None:
    """Alternate shading per stage, a line at every boundary, and each stage's label above the top panel."""
    for i, (item, (label, height)) in enumerate(zip(placed, _stage_labels(placed, axes_width_in))):
        left, right = item.offset, item.offset + item.width
        for ax in axes:
            if i % 2:
                ax.axvspan(left, right, color="0.5", alpha=0.08, linewidth=0)
            ax.axvline(left, color="0.4", linestyle="--", linewidth=0.8)
        top = axes[0].get_xaxis_transform()
        axes[0].text((left + right) / 2, height, label, transform=top, ha="center", va="bottom", fontsize=9)
    for ax in axes:
        ax.axvline(placed[-1].offset + placed[-1].width, color="0.4", linestyle="--", linewidth=0.8)


def _plot_lr(ax: Any, placed: list[_Placed]) -> None:
    for item in placed:
        ax.plot(*item.series("train/lr"), color="C0", linewidth=1.2)
    ax.set_ylabel("learning rate")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2g}"))


def _plot_share(ax: Any, placed: list[_Placed]) -> None:
    """Scheduled multimodal share as a line, the share each batch really had (in samples) as faint dots."""
    for item in placed:
        ax.scatter(*item.series("mix/multimodal_share_samples"), s=6, color="C1", alpha=0.4, linewidths=0)
        ax.plot(*item.series("mix/scheduled_share"), color="C1", linewidth=1.5)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("multimodal share")
    handles = [Line2D([], [], color="C1", linewidth=1.5), Line2D([], [], color="C1", marker=".", linestyle="")]
    ax.legend(handles, ["scheduled", "realised per batch (samples)"], loc="upper left", fontsize=8, frameon=False)


def _plot_stage_setting(ax: Any, placed: list[_Placed], tag: str, key: str, color: str) -> bool:
    """A setting such as the RoPE base: logged values where a stage logs ``tag``, else its constant ``key``.

    Either way the setting is held to the end of the stage.
    """
    drawn = False
    for item in placed:
        xs, ys = item.series(tag)
        if not xs and item.stage.get(key) is not None:
            xs, ys = [item.offset], [float(item.stage[key])]
        if xs:
            xs, ys = [*xs, item.offset + item.width], [*ys, ys[-1]]
            ax.plot(xs, ys, color=color, linewidth=2, drawstyle="steps-post")
            drawn = True
    return drawn


def _plot_settings(rope_ax: Any, seq_ax: Any, placed: list[_Placed]) -> None:
    """RoPE base and sequence length panels, both on log scales with plain-number ticks."""
    compact = FuncFormatter(lambda value, _: _format_compact(value))
    panels = [
        (rope_ax, "train/rope_base", "rope_base", "RoPE base", 10, "C2"),
        (seq_ax, "train/seq_len", "seq_len", "sequence length", 2, "C4"),
    ]
    for ax, tag, key, ylabel, base, color in panels:
        ax.set_ylabel(ylabel)
        if not _plot_stage_setting(ax, placed, tag, key, color):
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.5")
            continue
        ax.set_yscale("log", base=base)
        ax.margins(y=0.25)
        ax.yaxis.set_major_formatter(compact)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def _format_compact(value: float) -> str:
    """Tick labels such as ``256``, ``50k``, ``1M``."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _is_validation_loss(tag: str) -> bool:
    return tag.startswith("val/") and (tag.endswith("loss") or tag == "val/caption")


def _plot_losses(ax: Any, placed: list[_Placed]) -> None:
    """Train loss as a thin line, every validation loss as markers joined within a stage, on a log scale."""
    val_tags = sorted({tag for item in placed for tag in item.scalars if _is_validation_loss(tag)})
    styles = {"train/loss": {"color": "0.45", "linewidth": 0.9, "alpha": 0.8}}
    for i, tag in enumerate(val_tags):
        styles[tag] = {"color": f"C{(i + 1) % 10}", "marker": "o", "markersize": 4}
    labelled = set()
    for item in placed:
        for tag, style in styles.items():
            xs, ys = item.series(tag)
            if xs:
                ax.plot(xs, ys, label=None if tag in labelled else tag, **style)
                labelled.add(tag)
    ax.set_ylabel("loss")
    if labelled:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1.5, 0.6)))
        ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.85)


def plot_pipeline(manifest: dict, path: str | Path, scalars: Sequence[Scalars] | None = None) -> Path:
    """Draw the whole run on the pipeline-step axis and save it as a PNG.

    Args:
        manifest: the pipeline manifest, stages in run order.
        path: where to write the PNG.
        scalars: each stage's scalars, if already read (else they are read from the stages' ``log_dir``).

    Returns:
        The path written.
    """
    scalars = list(scalars) if scalars is not None else read_stage_scalars(manifest)
    offsets = stage_offsets(manifest, scalars)
    placed = [_Placed(stage, logged, offset) for stage, logged, offset in zip(manifest["stages"], scalars, offsets)]
    shown = [item for item in placed if item.width > 0]
    fig = Figure(figsize=(12, 14), dpi=110)
    axes = fig.subplots(5, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 0.8, 0.8, 1.8], "hspace": 0.08})
    _plot_lr(axes[0], shown)
    _plot_share(axes[1], shown)
    _plot_settings(axes[2], axes[3], shown)
    _plot_losses(axes[4], shown)
    if shown:
        _draw_stage_bands(axes, shown, axes_width_in=fig.get_figwidth() * (RIGHT - LEFT))
        axes[-1].set_xlim(0, max(shown[-1].offset + shown[-1].width, 1))
    axes[-1].set_xlabel("pipeline step (stages laid end to end in run order)")
    for ax in axes:
        ax.grid(alpha=0.3, linewidth=0.5)
    fig.suptitle(f"Pipeline {manifest.get('pipeline', '')}", fontsize=15, y=0.99, va="top")
    fig.text(0.5, 0.962, _stage_key(placed), ha="center", va="top", fontsize=10)
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=0.9, bottom=0.04)
    fig.align_ylabels(axes)
    path = Path(path)
    fig.savefig(path)
    return path


def _stage_key(placed: list[_Placed]) -> str:
    """Every stage's label in run order, for the line under the title (those that did not run are marked)."""
    keys = [
        item.label if item.width > 0 else f"{item.label} ({item.stage.get('status', 'pending')}, not plotted)"
        for item in placed
    ]
    return "\n".join(_wrap_items("stages: ", keys, width=140, separator="  |  "))


# ---------------------------------------------------------------------------------------------------------------
# The text summary
# ---------------------------------------------------------------------------------------------------------------


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _format_tokens(tokens: float | None) -> str:
    return "n/a" if tokens is None else f"{int(tokens):,}"


def _evaluation_group(tag: str) -> str | None:
    """Which kind of evaluation a validation tag reports, or None for one the summary leaves out (or checks)."""
    if tag.startswith("val/probe_"):  # listed with the capability checks
        return None
    if tag.endswith("ppl") or tag.startswith("val/text_ppl_"):  # the joint stages name the set: val/text_ppl_sotu
        return "perplexity"
    if "r@" in tag:
        return "retrieval recall"
    if tag in ("val/caption", "val/multimodal_loss") or tag.startswith("val/multimodal_loss_"):
        return "caption quality"
    if tag.startswith("val/passkey"):
        return "passkey accuracy"
    if tag.startswith("val/copy"):
        return "copying"
    return None


def _tag_order(tag: str) -> tuple[bool, str, int]:
    """Sort key for validation tags: chance levels last, then by name, then by the number after ``@``."""
    name, _, number = tag.partition("@")
    return "chance" in tag, name, int(number) if number.isdigit() else 0


def _format_change(tag: str, start: float | None, final: float | None) -> str:
    name = tag.removeprefix("val/")
    if "chance" in tag or start is None:
        return f"{name} {_format_value(final)}"
    return f"{name} {_format_value(start)} -> {_format_value(final)}"


def _is_better(metric: dict) -> bool | None:
    """Whether the headline metric beat its start (None when unchanged or unknown)."""
    start, final = metric.get("start"), metric.get("final")
    if start is None or final is None:
        return metric.get("improved")
    if start == final:
        return None
    return final < start if metric.get("mode", "min") == "min" else final > start


def _format_metric(metric: dict | None) -> str | None:
    if not metric or metric.get("final") is None:
        return None
    better = _is_better(metric)
    verdict = {True: "better", False: "worse", None: "unchanged"}[better]
    mode = f" ({metric['mode']})" if metric.get("mode") else ""
    change = f"{_format_value(metric.get('start'))} -> {_format_value(metric['final'])}"
    return f"{metric.get('name', 'metric')}{mode}: {change}, {verdict}"


def _format_evaluations(stage: Stage) -> list[str]:
    """One line per kind of evaluation found in the stage's final validation metrics."""
    start, final = stage.get("start_metrics") or {}, stage.get("final_metrics") or {}
    groups: dict[str, list[str]] = {}
    for tag in sorted(final, key=_tag_order):
        group = _evaluation_group(tag)
        if group:
            groups.setdefault(group, []).append(_format_change(tag, start.get(tag), final[tag]))
    lines = []
    for group in EVALUATION_GROUPS:
        if group in groups:
            lines += _wrap_items(f"   {group}: ", groups[group], width=110, separator=", ", indent="      ")
    return lines


def _format_stage(stage: Stage, checks: list[Check]) -> list[str]:
    """A stage's block: heading, then (if it ran) steps, tokens, wall time, headline metric, evaluations, checks."""
    status = stage.get("status", "pending")
    heading = f"{stage.get('index', '?')}. {stage.get('title') or stage.get('name')} [{stage.get('name')}]"
    if status == "pending":
        return [f"{heading}: not run (pending)"]
    if stage.get("steps") is None:
        problem = f" ({stage['problem']})" if stage.get("problem") else ""
        return [f"{heading}: {status}{problem}, wall time {format_duration(stage.get('wall_time_s'))}, no figures yet"]
    start = stage.get("global_step_start")
    end = stage.get("global_step")
    lines = [
        f"{heading}: {status}",
        f"   steps {stage['steps']} (global step {start} -> {end}), tokens {_format_tokens(stage.get('tokens'))}, "
        f"wall time {format_duration(stage.get('wall_time_s'))}",
    ]
    metric = _format_metric(stage.get("metric"))
    if metric:
        lines.append(f"   {metric}")
    return lines + _format_evaluations(stage) + format_checks(checks)


def _format_totals(stages: list[Stage], checks: list[list[Check]], pipeline_time: float | None) -> list[str]:
    """Totals, the capability verdict (:mod:`~mm_lightning.pipeline.verdict`), then the headline metrics'.

    ``pipeline_time``: the ``mm-lightning pipeline`` commands' own time running stages, shorter than the stages'
    summed when some ran side by side (both are given then)."""
    ran = [stage for stage in stages if stage.get("steps") is not None and stage.get("status") != "pending"]
    tokens = sum(stage.get("tokens") or 0 for stage in ran)
    summed = sum(stage.get("wall_time_s") or 0.0 for stage in ran)
    wall_time = format_duration(summed)
    if pipeline_time and pipeline_time < summed - 1:
        wall_time = f"{format_duration(pipeline_time)} (the stages' own {wall_time} summed: some ran side by side)"
    scored = [stage for stage in ran if _format_metric(stage.get("metric"))]
    better = sum(_is_better(stage["metric"]) is True for stage in scored)
    return [
        f"Total: {len(ran)} of {len(stages)} stages run, tokens {_format_tokens(tokens)}, wall time {wall_time}",
        format_verdict_totals(stages, checks),
        f"Headline metrics (secondary: perplexity, loss, recall): {better} of {len(scored)} stages beat their start",
    ]


def format_summary(manifest: dict) -> str:
    """The run's text summary: a header, one block per stage in run order, and the totals.

    Args:
        manifest: the pipeline manifest; stages that did not run may lack every numeric field.

    Returns:
        The summary, lines joined with newlines and ending in one.
    """
    header = f"Pipeline {manifest.get('pipeline', '?')}"
    if manifest.get("pipeline_file"):
        header += f" ({manifest['pipeline_file']})"
    if manifest.get("run_dir"):
        header += f", run in {manifest['run_dir']}"
    lines = [header, ""]
    checks = pipeline_checks(manifest["stages"])
    for stage, found in zip(manifest["stages"], checks):
        lines += [*_format_stage(stage, found), ""]
    lines += _format_totals(manifest["stages"], checks, manifest.get("wall_time_s"))
    return "\n".join(lines) + "\n"


def write_report(manifest: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.png`` (the whole run on one pipeline-step axis) and ``summary.txt`` into ``out_dir``.

    Args:
        manifest: the pipeline manifest (see the module docstring); stages missing logs are left out of the plot.
        out_dir: the folder to write into (created if needed).

    Returns:
        The paths of the figure and of the summary.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_pipeline(manifest, out_dir / "report.png")
    summary = out_dir / "summary.txt"
    summary.write_text(format_summary(manifest))
    return figure, summary
