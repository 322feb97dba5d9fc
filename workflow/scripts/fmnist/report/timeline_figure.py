"""The pipeline's timeline, results/runs/{run}/timeline.csv: read it, measure its bubble,
draw it.

Training records, for a few consecutive steps of epoch 1, when each stage ran the forward
and the backward pass of each micro-batch (format: workflow/schemas/timeline.schema.yaml).
From that:

* the measured idle fraction: per step, span = last end - first start over all stages and
  idle = 1 - (sum of busy time) / (K x span); the mean over the recorded steps, overall and
  per stage (then idle = 1 - the stage's busy time / span);
* the GPipe bubble formula (K-1)/(M+K-1), K stages and M micro-batches: the idle fraction of
  a perfect pipeline whose passes all take the same time, to compare the measurement with;
* the figure: one lane per stage (stage 0 on top), forward and backward boxes labelled with
  their micro-batch, idle time left empty; one panel per step, equally wide, each on its
  own time scale (a slow first step squeezes no other); PNG and PDF with deterministic bytes.

A single-process engine on a CPU runs one stage at a time, so its idle fraction is about
(K-1)/K whatever M is; the figure shows what was measured, not what a pipeline could do.
Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jsonschema
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fmnist.report.figures import METADATA, OKABE_ITO, RC
from fmnist.rundir import runfiles
from fmnist.rundir.files import atomic_write
from fmnist.schemas import load_schema

SCHEMA = load_schema("timeline")
COLUMNS = list(SCHEMA["properties"])
"""The header of every timeline.csv, in order."""
PHASES = SCHEMA["properties"]["phase"]["enum"]
OLDER_COLUMNS = ["step", "stage", "microbatch", "phase", "start_seconds", "end_seconds"]
"""The header before the clock columns (host, clock_error_seconds) were added."""
PASSES = ("forward", "backward")
"""What every (stage, micro-batch) has once a step; a weight pass at most once besides."""


class TimelineError(runfiles.RunFileError):
    """A timeline.csv that breaks its format; the message names the file, row and column."""


@dataclass(frozen=True)
class Pipeline:
    """What run.json says about the pipeline that ran."""

    engine: str
    schedule: str
    microbatches: int


@dataclass(frozen=True)
class Idle:
    """The measured idle fractions, each the mean over the recorded steps."""

    stages: int
    microbatches: int
    fraction: float
    per_stage: tuple[float, ...]
    per_step: dict[int, float]

    @property
    def gpipe(self) -> float:
        return gpipe_bubble(self.stages, self.microbatches)


def gpipe_bubble(stages: int, microbatches: int) -> float:
    """(K-1)/(M+K-1): the idle fraction of GPipe with K equal stages and M micro-batches."""
    return (stages - 1) / (microbatches + stages - 1)


# --------------------------------------------------------------------------- reading


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(SCHEMA)


def _where(path, lineno: int, column: str) -> str:
    # Rows counted like the file's lines, the header being row 1 (as in figures.py).
    return f"{path}: row {lineno}, column {column}"


def _parse_cell(text: str, column: str, where: str):
    """The cell as the schema's type says (a phase stays text); nan and inf are no times."""
    kind = SCHEMA["properties"][column].get("type")
    if kind not in ("integer", "number"):
        return text.strip()
    try:
        value = int(text) if kind == "integer" else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TimelineError(
            f"{where}: {text!r} is not {'an integer' if kind == 'integer' else 'a number'}"
        )
    return value


def _parse_row(cells: list[str], lineno: int, path) -> dict:
    row = {
        column: _parse_cell(cell, column, _where(path, lineno, column))
        for column, cell in zip(COLUMNS, cells)
    }
    error = next(_validator().iter_errors(row), None)
    if error is not None:
        column = error.absolute_path[0] if error.absolute_path else "?"
        raise TimelineError(f"{_where(path, lineno, column)}: {error.message}")
    if row["end_seconds"] < row["start_seconds"]:
        raise TimelineError(
            f"{_where(path, lineno, 'end_seconds')}: {row['end_seconds']!r} is before "
            f"start_seconds {row['start_seconds']!r}"
        )
    return row


def _check_header(header: list[str], path) -> None:
    if header == COLUMNS:
        return
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    problem = (
        f"missing column(s) {', '.join(missing)}"
        if missing
        else f"unknown column(s) {', '.join(extra)}"
        if extra
        else "columns out of order"
    )
    raise TimelineError(f"{path}: {problem}; the header must be {','.join(COLUMNS)}")


def read_timeline(path) -> pd.DataFrame:
    """The rows of a timeline.csv, each checked against the schema, with a ``row`` column
    holding its row number in the file (header = 1). A file from before the clock columns
    is read as timed on one clock."""
    lines = runfiles.read_csv_rows(path, TimelineError)
    header = [h.strip() for h in lines[0]]
    older = header == OLDER_COLUMNS
    if not older:
        _check_header(header, path)
    rows = []
    for lineno, cells in enumerate(lines[1:], start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise TimelineError(
                f"{path}: row {lineno}: expected {len(header)} values, got {len(cells)}"
            )
        if older:
            cells = [*cells, "", "0"]
        rows.append({**_parse_row(cells, lineno, path), "row": lineno})
    if not rows:
        raise TimelineError(f"{path}: no rows")
    return pd.DataFrame(rows, columns=[*COLUMNS, "row"])


def read_pipeline(path) -> Pipeline:
    """The engine, schedule and micro-batch count of a run, from its run.json."""
    params = runfiles.read_record(Path(path))["params"]
    for key in ("engine", "schedule"):
        if not isinstance(params.get(key), str) or not params[key]:
            raise runfiles.RunFileError(f"{path}: key params.{key}: missing (not a pipeline run?)")
    microbatches = params.get("microbatches")
    if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
        raise runfiles.RunFileError(
            f"{path}: key params.microbatches: {microbatches!r} is not a positive integer"
        )
    # train.schedule chooses the distributed engine's schedule; one process runs GPipe's order.
    schedule = params["schedule"] if params["engine"] == "distributed" else "gpipe"
    return Pipeline(params["engine"], schedule, microbatches)


# --------------------------------------------------------------------------- checking


def _describe(row) -> str:
    return (
        f"row {row.row} (step {row.step}, stage {row.stage}, "
        f"micro-batch {row.microbatch} {row.phase})"
    )


def _check_indices(timeline: pd.DataFrame, microbatches: int, path) -> None:
    """Stages 0..K-1 with none left out, micro-batches below M."""
    stages = sorted(set(timeline["stage"]))
    if stages != list(range(len(stages))):
        absent = sorted(set(range(stages[-1] + 1)) - set(stages))
        raise TimelineError(f"{path}: stages are not 0..K-1: no row of stage {absent[0]}")
    too_big = timeline[timeline["microbatch"] >= microbatches]
    if not too_big.empty:
        row = too_big.iloc[0]
        raise TimelineError(
            f"{_where(path, row.row, 'microbatch')}: {row.microbatch} is not below "
            f"run.json's params.microbatches ({microbatches})"
        )


def _check_complete(timeline: pd.DataFrame, microbatches: int, path) -> None:
    """Every step has each (stage, micro-batch) forward and backward once, and a weight
    pass at most once."""
    key = ["step", "stage", "microbatch", "phase"]
    repeated = timeline[timeline.duplicated(key, keep="first")]
    if not repeated.empty:
        raise TimelineError(f"{path}: {_describe(repeated.iloc[0])} is there twice")
    stages = timeline["stage"].max() + 1
    expected = stages * microbatches * len(PASSES)
    passes = timeline[timeline["phase"].isin(PASSES)]
    for step, count in passes.groupby("step").size().items():
        if count != expected:
            present = set(map(tuple, passes.loc[passes["step"] == step, key[1:]].to_numpy()))
            wanted = [(s, m, p) for s in range(stages) for m in range(microbatches) for p in PASSES]
            s, m, p = next(w for w in wanted if w not in present)
            raise TimelineError(
                f"{path}: step {step} has {count} of its {expected} passes "
                f"({stages} stages x {microbatches} micro-batches x {len(PASSES)}): "
                f"no {p} of micro-batch {m} on stage {s}"
            )


def phases_of(timeline: pd.DataFrame) -> list[str]:
    """The phases drawn: forward and backward, and weight where the schedule computes
    weight gradients apart (the zero-bubble ones, for some micro-batches or all)."""
    return [p for p in PHASES if p in PASSES or p in set(timeline["phase"])]


def _check_one_at_a_time(timeline: pd.DataFrame, path) -> None:
    """A stage runs one pass at a time: two that overlap mean a clock or a recording bug."""
    ordered = timeline.sort_values(["stage", "start_seconds", "end_seconds"], kind="stable")
    for _, lane in ordered.groupby("stage", sort=True):
        rows = list(lane.itertuples(index=False))
        for before, after in zip(rows, rows[1:]):
            if after.start_seconds < before.end_seconds:
                raise TimelineError(
                    f"{path}: stage {after.stage} runs two passes at once: {_describe(after)} "
                    f"starts at {after.start_seconds!r} s, before {_describe(before)} ends "
                    f"at {before.end_seconds!r} s"
                )


def check_timeline(timeline: pd.DataFrame, microbatches: int, path) -> None:
    """TimelineError naming the file and the rows at fault if the rows do not make up whole
    steps of a pipeline of ``microbatches`` micro-batches."""
    _check_indices(timeline, microbatches, path)
    _check_complete(timeline, microbatches, path)
    _check_one_at_a_time(timeline, path)
    spans = step_spans(timeline)
    if (spans <= 0).any():
        raise TimelineError(f"{path}: step {spans.idxmin()} takes no time (all its passes are 0 s)")


# --------------------------------------------------------------------------- measuring


def step_spans(timeline: pd.DataFrame) -> pd.Series:
    """Per step: last end - first start over all stages."""
    steps = timeline.groupby("step")
    return steps["end_seconds"].max() - steps["start_seconds"].min()


def idle_fractions(timeline: pd.DataFrame, microbatches: int) -> Idle:
    """The measured idle fractions of a checked timeline (see the module's docstring)."""
    stages = int(timeline["stage"].max()) + 1
    busy = (
        (timeline["end_seconds"] - timeline["start_seconds"])
        .groupby([timeline["step"], timeline["stage"]])
        .sum()
        .unstack(fill_value=0.0)
    )
    span = step_spans(timeline)
    # (K·span - busy) / (K·span), not 1 - busy/(K·span): exact where the times are whole
    # numbers, so that a perfect schedule measures exactly its formula.
    per_step = (stages * span - busy.sum(axis=1)) / (stages * span)
    per_stage = busy.rsub(span, axis=0).div(span, axis=0).mean(axis=0)
    return Idle(
        stages=stages,
        microbatches=microbatches,
        fraction=float(per_step.mean()),
        per_stage=tuple(float(per_stage[s]) for s in range(stages)),
        per_step={int(step): float(value) for step, value in per_step.items()},
    )


# --------------------------------------------------------------------------- drawing

WIDTH_IN = 7.0
"""A two-column paper's full width: the boxes need it."""
LANE_IN = 0.4
MARGINS_IN = {"left": 0.75, "right": 0.15, "top": 0.55, "bottom": 0.5, "steps": 0.25}
STEP_GAP_IN = 0.15
"""Between the steps' panels."""
PHASE_COLOURS = {"forward": OKABE_ITO[0], "backward": OKABE_ITO[1], "weight": OKABE_ITO[2]}
LABEL_COLOURS = {"forward": "white", "backward": "black", "weight": "black"}  # readable
IDLE_COLOUR = "#ECECEC"
LABEL_SIZES = (6, 5, 4)
"""Micro-batch numbers shrink to fit their box; a box too narrow even for 4 pt has none."""


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _label_size(text: str, width_pt: float) -> float | None:
    # A digit of DejaVu Sans is about 0.64 em wide; leave a point either side.
    return next((s for s in LABEL_SIZES if len(text) * 0.64 * s + 2 <= width_pt), None)


def _draw_lanes(ax, timeline: pd.DataFrame, stages: int, pt_per_ms: float) -> None:
    for stage in range(stages):
        ax.axhspan(stage - 0.4, stage + 0.4, color=IDLE_COLOUR, linewidth=0, zorder=0)
    # One call per lane and phase: thousands of passes stay a few objects in the PDF.
    for (stage, phase), passes in timeline.groupby(["stage", "phase"], sort=True):
        starts = passes["start_seconds"].to_numpy() * 1e3
        widths = passes["end_seconds"].to_numpy() * 1e3 - starts
        ax.broken_barh(
            list(zip(starts, widths)),
            (stage - 0.4, 0.8),
            facecolors=PHASE_COLOURS[phase],
            edgecolors="white",
            linewidth=0.4,
            zorder=2,
        )
        for start, width, microbatch in zip(starts, widths, passes["microbatch"]):
            size = _label_size(str(microbatch), width * pt_per_ms)
            if size is not None:
                ax.text(
                    start + width / 2,
                    stage,
                    str(microbatch),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color=LABEL_COLOURS[phase],
                    zorder=3,
                )


def _draw_step_span(ax, step: int, span_ms: float) -> None:
    """A bracket over the lanes for the step's span, the time its idle fraction is of."""
    ax.plot(
        [0, 0, span_ms, span_ms],
        [-0.55, -0.65, -0.65, -0.55],
        color="black",
        linewidth=0.6,
        clip_on=False,
    )
    ax.text(span_ms / 2, -0.7, f"step {step}: {span_ms:,.1f} ms", ha="center", va="bottom")


def _step_axes(fig, steps: int, stages: int, height: float) -> tuple[list, float]:
    """One axes per step, side by side and equally wide, and that width in inches."""
    margins = MARGINS_IN
    room = WIDTH_IN - margins["left"] - margins["right"] - STEP_GAP_IN * (steps - 1)
    width = room / steps
    bottom, axes_h = margins["bottom"] / height, (margins["steps"] + stages * LANE_IN) / height
    axes = []
    for i in range(steps):
        left = (margins["left"] + i * (width + STEP_GAP_IN)) / WIDTH_IN
        axes.append(fig.add_axes((left, bottom, width / WIDTH_IN, axes_h)))
    return axes, width


def _draw_step(ax, passes: pd.DataFrame, step: int, stages: int, width_in: float) -> None:
    """One step's passes, in ms since its first pass started, on the step's own scale."""
    first = passes["start_seconds"].min()
    shifted = passes.assign(
        start_seconds=passes["start_seconds"] - first, end_seconds=passes["end_seconds"] - first
    )
    span_ms = float(shifted["end_seconds"].max()) * 1e3
    ax.set_xlim(0, span_ms * 1.01)
    # Stage 0 on top; the room above it holds the step's bracket.
    ax.set_ylim(stages - 0.5, -0.5 - MARGINS_IN["steps"] / LANE_IN)
    _draw_lanes(ax, shifted, stages, width_in * 72 / (span_ms * 1.01))
    _draw_step_span(ax, step, span_ms)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    ax.set_yticks([])


def draw_timeline(timeline: pd.DataFrame, pipeline: Pipeline, idle: Idle):
    """The figure of a checked timeline (the caller closes it)."""
    k, m = idle.stages, pipeline.microbatches
    margins = MARGINS_IN
    height = margins["top"] + margins["steps"] + k * LANE_IN + margins["bottom"]
    fig = plt.figure(figsize=(WIDTH_IN, height))
    steps = timeline.groupby("step", sort=True)
    axes, width_in = _step_axes(fig, steps.ngroups, k, height)
    for ax, (step, passes) in zip(axes, steps):
        _draw_step(ax, passes, int(step), k, width_in)
    axes[0].set_yticks(range(k))
    axes[0].set_yticklabels([f"stage {s}\nidle {idle.per_stage[s]:.2f}" for s in range(k)])
    axes[0].set_xlabel("Time since the step's first pass started (ms)", loc="left")
    top = 1 - 0.08 / height
    fig.text(
        margins["left"] / WIDTH_IN,
        top,
        f"{pipeline.engine} engine, {pipeline.schedule} schedule: "
        f"K = {_count(k, 'stage', 'stages')}, M = {_count(m, 'micro-batch', 'micro-batches')}",
        va="top",
        fontweight="bold",
    )
    fig.text(
        margins["left"] / WIDTH_IN,
        top - 0.2 / height,
        f"measured idle fraction {idle.fraction:.2f} "
        f"(GPipe formula (K\u22121)/(M+K\u22121) = {idle.gpipe:.2f})" + clock_note(timeline),
        va="top",
    )
    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in phases_of(timeline)]
    handles.append(Patch(facecolor=IDLE_COLOUR, edgecolor="0.6", linewidth=0.4, label="idle"))
    fig.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1 - margins["right"] / WIDTH_IN, 0.02 / height),
        ncol=len(handles),
        handlelength=1.2,
        columnspacing=1.0,
    )
    return fig


def clock_note(timeline: pd.DataFrame) -> str:
    """Where stages ran on several hosts, how their clocks were aligned (each host has its
    own): the boxes and the idle fraction are as exact as that."""
    hosts = sorted(h for h in timeline["host"].unique() if h)
    if len(hosts) < 2:
        return ""
    error_ms = timeline["clock_error_seconds"].max() * 1000
    return f"; hosts {', '.join(hosts)}: clocks aligned at a barrier, within {error_ms:.2g} ms"


def save(fig, png, pdf) -> None:
    """Write ``fig`` as PNG and PDF, each atomically and without dates or versions."""
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, metadata=METADATA[fmt])
        )


def plot_timeline(timeline_path, record_path, png, pdf) -> Idle:
    """Read and check a run's timeline.csv and run.json, draw the figure into ``png`` and
    ``pdf``, and return the idle fractions it shows."""
    pipeline = read_pipeline(record_path)
    timeline = read_timeline(timeline_path)
    check_timeline(timeline, pipeline.microbatches, timeline_path)
    idle = idle_fractions(timeline, pipeline.microbatches)
    with plt.rc_context(RC):
        fig = draw_timeline(timeline, pipeline, idle)
        try:
            save(fig, png, pdf)
        finally:
            plt.close(fig)
    return idle
