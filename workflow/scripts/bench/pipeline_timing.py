"""What a run's timeline.csv says about its pipeline, for benchmark_pipeline.py.

fmnist.report.timeline_figure reads and checks the file and measures the idle fraction; this adds
what a
benchmark of the distributed engine needs beside it:

* clock_shifts / aligned: each rank of the distributed engine starts its timeline clock
  when a barrier releases it, and the ranks are not released at the same instant; the
  recorded transfers (a receive cannot end before its send) bound the offset;
* replay_span: the span of a step replayed with zero-latency transfers (the measured
  passes in the measured order), so span - replay is what transfers and waits cost;
* timeline_figures: all of that for one run, as the benchmark's JSON records it.

Imports no torch.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
from fmnist.report import timeline_figure as bubble

# bubble's own per-step span (last end - first start over all stages), the span its idle
# fraction is of; the benchmark reports it beside the replay's.
spans = bubble.step_spans


def replay_span(step: list) -> float:
    """The span of one step's passes replayed with zero-latency transfers: each pass, in
    its stage's measured order, starts when its stage is free and its input is ready
    (forward of stage s after forward of s-1; backward of s after backward of s+1)."""
    lanes = {}
    for row in sorted(step, key=lambda r: r.start_seconds):
        lanes.setdefault(row.stage, []).append(row)
    last = max(lanes)
    done, free, nxt = {}, dict.fromkeys(lanes, 0.0), dict.fromkeys(lanes, 0)
    while any(nxt[s] < len(lanes[s]) for s in lanes):
        progressed = False
        for s, lane in lanes.items():
            while nxt[s] < len(lane):
                row = lane[nxt[s]]
                if row.phase == "forward":
                    dep = (s - 1, row.microbatch, "forward") if s > 0 else None
                elif row.phase == "weight":  # weight gradients after the stage's backward
                    dep = (s, row.microbatch, "backward")
                else:
                    dep = (s + 1, row.microbatch, "backward") if s < last else None
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep else 0.0)
                free[s] = done[(s, row.microbatch, row.phase)] = start + (
                    row.end_seconds - row.start_seconds
                )
                nxt[s] += 1
                progressed = True
        if not progressed:
            raise ValueError("the timeline's order contradicts the pipeline's dependencies")
    return max(free.values())


def clock_shifts(timeline: pd.DataFrame) -> list[float]:
    """Per stage, the smallest shift (seconds) of its recorded times against stage 0's
    that puts every receive after its send: forward of (s, m) starts after forward of
    (s-1, m) ends, backward of (s-1, m) starts after backward of (s, m) ends.

    Each rank of the distributed engine starts its timeline clock when a barrier releases
    it, and the ranks are not released at the same instant; the transfers bound the
    offset from both sides (one offset per run: the clocks start once)."""
    keyed = timeline.set_index(["stage", "phase", "step", "microbatch"]).sort_index()
    shifts = [0.0]
    for s in range(1, int(timeline["stage"].max()) + 1):
        before, after = keyed.loc[s - 1], keyed.loc[s]  # true time of s = recorded + shift
        low = (before.loc["forward", "end_seconds"] - after.loc["forward", "start_seconds"]).max()
        high = (
            before.loc["backward", "start_seconds"] - after.loc["backward", "end_seconds"]
        ).min()
        shifts.append(shifts[-1] + min(max(0.0, float(low)), float(high)))
    return shifts


def aligned(timeline: pd.DataFrame, shifts: list[float]) -> pd.DataFrame:
    """The timeline with each stage's times moved by its shift (clock_shifts)."""
    out = timeline.copy()
    offset = out["stage"].map(dict(enumerate(shifts)))
    out["start_seconds"] += offset
    out["end_seconds"] += offset
    return out


def timeline_figures(path: Path, microbatches: int, distributed: bool) -> dict:
    """Idle fractions (fmnist.report.timeline_figure), per-stage compute, span and zero-latency
    replay;
    for the distributed engine with the stages' clocks aligned (clock_shifts), and the
    idle fraction as recorded beside it."""
    recorded = bubble.read_timeline(path)
    bubble.check_timeline(recorded, microbatches, path)
    shifts = clock_shifts(recorded) if distributed else [0.0]
    timeline = aligned(recorded, shifts) if distributed else recorded
    idle = bubble.idle_fractions(timeline, microbatches)
    duration = timeline["end_seconds"] - timeline["start_seconds"]
    busy = duration.groupby([timeline["step"], timeline["stage"]]).sum().unstack(fill_value=0.0)
    span = spans(timeline)
    figures = {
        "idle_fraction": idle.fraction,
        "idle_per_stage": list(idle.per_stage),
        "gpipe_formula": idle.gpipe,
        "steps": len(span),
        "span_ms": 1e3 * float(span.mean()),
        "compute_ms_per_stage": [1e3 * float(busy[s].mean()) for s in sorted(busy.columns)],
        "span_minus_busiest_ms": 1e3 * float((span - busy.max(axis=1)).mean()),
    }
    if distributed:
        # The replay needs no clocks across stages, so it runs on the times as recorded.
        replays = [
            replay_span(list(g.itertuples(index=False))) for _, g in recorded.groupby("step")
        ]
        figures |= {
            "clock_shift_ms": [1e3 * x for x in shifts],
            "idle_fraction_as_recorded": bubble.idle_fractions(recorded, microbatches).fraction,
            "span_ms_as_recorded": 1e3 * float(spans(recorded).mean()),
            "replay_span_ms": 1e3 * statistics.mean(replays),
            "waits_ms": 1e3 * statistics.mean(s - r for s, r in zip(span, replays)),
        }
    return figures
