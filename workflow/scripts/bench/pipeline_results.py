"""benchmark_pipeline.py's figures over the rounds: per variant its throughput and
speedups, the check that the engines trained to the same numbers, and the goal's verdict.

Each figure is the best and the median over the rounds; speedups are also the median of
per-round ratios, because the machine's speed drifts between rounds and a ratio within a
round cancels most of it. Imports no torch.
"""

from __future__ import annotations

import statistics

from bench.common import summarize
from bench.pipeline_variants import METRICS, STAGES

GOAL = 1.5


def median_of(runs: list[dict], *path):
    """The median over the runs of run[path[0]][path[1]]...; element by element for lists."""
    values = []
    for run in runs:
        value = run
        for part in path:
            value = value[part]
        values.append(value)
    if isinstance(values[0], list):
        return [statistics.median(v) for v in zip(*values)]
    return statistics.median(values)


def ratios(sps: dict, reference: dict) -> dict:
    return {
        "best": sps["best"] / reference["best"],
        "median": sps["median"] / reference["median"],
        "median_of_rounds": statistics.median(a / b for a, b in zip(sps["all"], reference["all"])),
    }


def _entry(v, rs: list[dict]) -> dict:
    # Times are better low: their best is the minimum, not summarize's maximum.
    return {
        "model": v.model,
        "variant": v.name,
        "engine": v.engine,
        "microbatches": v.microbatches,
        "schedule": v.schedule,
        "cpu_step": v.cpu_step if v.engine == "single_process" else None,
        "samples_per_second": summarize([r["samples_per_second"] for r in rs]),
        "step_ms": summarize([r["step_ms"] for r in rs]) | {"best": min(r["step_ms"] for r in rs)},
        "run_wall_seconds": summarize([r["wall_seconds"] for r in rs])
        | {"best": min(r["wall_seconds"] for r in rs)},
        "timeline": {k: median_of(rs, "timeline", k) for k in rs[0]["timeline"]},
        "timeline_per_round": [r["timeline"] for r in rs],
    }


def bubble_speedup_bound(schedule: str, m: int, per_process: int) -> float:
    """A schedule's bound on the speedup of P processes over one, from its idle fraction
    with equal stages and free transfers: GPipe, 1F1B and looped BFS idle (P-1)/(M+P-1) of
    the step; the interleaved schedules (P-1)/(v*M+P-1) with v stages per process (Narayanan
    et al. 2021); the zero-bubble ones fill the bubble with weight-gradient passes (Qi et
    al. 2023): P in their ideal."""
    p = STAGES
    if "zero_bubble" in schedule or schedule == "dual_pipe_v":
        return float(p)
    v = per_process if schedule.startswith("interleaved") else 1
    return p * v * m / (v * m + p - 1)


def _pipeline_costs(v, shape, comm: dict) -> dict:
    """The bubble's bound on a distributed variant's speedup, and its transfers' cost per
    step as the direct measurement prices them (M round trips + the stop vote)."""
    m = v.microbatches
    rtt = statistics.median(comm["round_trip_seconds"]["x".join(map(str, shape))])
    vote = statistics.median(comm["all_reduce_seconds"])
    return {
        "bubble_speedup_bound": bubble_speedup_bound(v.schedule, m, v.stages_per_process),
        "comm_microbenchmark": {
            "boundary_shape": list(shape),
            "round_trip_ms": 1e3 * rtt,
            "all_reduce_ms": 1e3 * vote,
            "per_step_ms": 1e3 * (m * rtt + vote),
            "transfers_per_step": 2 * m,
        },
    }


def variant_entries(variants, runs: dict, comm: dict, shapes: dict) -> dict:
    entries = {}
    for v in variants:
        entries[v.key] = _entry(v, runs[v.key])
        if v.engine == "distributed":
            entries[v.key] |= _pipeline_costs(v, shapes[(v.model, v.microbatches)], comm)
    # speedups: against the same-M single-process run and the model's fastest one
    for v in variants:
        entry = entries[v.key]
        same = entries.get(f"{v.model}/single_autograd_m{v.microbatches}")
        singles = [
            e for e in entries.values() if e["model"] == v.model and e["engine"] != "distributed"
        ]
        fastest = max(singles, key=lambda e: e["samples_per_second"]["median"])
        sps = entry["samples_per_second"]
        entry["speedup_vs_same_microbatches"] = (
            ratios(sps, same["samples_per_second"]) if same is not None else None
        )
        entry["speedup_vs_fastest_single"] = ratios(sps, fastest["samples_per_second"])
        entry["fastest_single"] = fastest["variant"]
    return entries


def identity_checks(variants, runs: dict) -> dict:
    """Metric columns identical between single autograd mM and distributed mM (all rounds)."""
    pairs = []
    for v in variants:
        if v.engine != "distributed":
            continue
        reference = f"{v.model}/single_autograd_m{v.microbatches}"
        theirs = [r["metrics"] for r in runs[reference]]
        ours = [r["metrics"] for r in runs[v.key]]
        same = all(m == theirs[0] for m in theirs + ours)
        # Looped BFS sums the micro-batches' gradients last to first: other rounding.
        expected = v.schedule != "looped_bfs"
        pairs.append(
            {"variant": v.key, "reference": reference, "identical": same, "expected": expected}
        )
    kernels = []
    for v in variants:
        if v.cpu_step == "kernels" and v.engine == "single_process":
            reference = f"{v.model}/single_autograd_m1"
            same = all(
                r["metrics"] == runs[reference][0]["metrics"] for r in runs[v.key] + runs[reference]
            )
            kernels.append({"variant": v.key, "reference": reference, "identical": same})
    return {
        "columns": METRICS,
        "identical": all(p["identical"] for p in pairs if p["expected"]),
        "pairs": pairs,
        "kernels_vs_autograd": kernels,
    }


def _verdict(pool: list[dict], reference: str) -> dict:
    best = max(pool, key=lambda e: e[f"speedup_vs_{reference}"]["median_of_rounds"])
    speedup = best[f"speedup_vs_{reference}"]["median_of_rounds"]
    against = (
        best["fastest_single"]
        if reference == "fastest_single"
        else f"single autograd m{best['microbatches']}"
    )
    return {
        "best_variant": best["variant"],
        "against": against,
        "speedup": speedup,
        "met": speedup >= GOAL,
    }


def goal_verdicts(models: list[str], entries: dict) -> dict:
    """Per model and reference, the GPipe variant (the issue's goal: GPipe, M >= 4) and
    the variant of any schedule with the highest median of per-round ratios, and whether
    each reaches GOAL."""
    verdicts = {}
    for model in models:
        candidates = [
            e
            for e in entries.values()
            if e["model"] == model and e["engine"] == "distributed" and e["microbatches"] >= 4
        ]
        verdicts[model] = {}
        for reference in ("fastest_single", "same_microbatches"):
            verdicts[model][reference] = {}
            for scope in ("gpipe", "any"):
                pool = [e for e in candidates if scope == "any" or e["schedule"] == scope]
                if pool:
                    verdicts[model][reference][scope] = _verdict(pool, reference)
    return {
        "goal": GOAL,
        "judged_on": "median of per-round ratios, distributed variants with M >= 4; gpipe: "
        "the issue's goal (GPipe), any: either schedule; fastest_single: against the model's "
        "fastest single-process variant (what switching engines gains); same_microbatches: "
        "against single autograd with the same M (the reference of the bubble bound)",
        "models": verdicts,
    }
