"""The compute statement a paper can paste (compute.md, compute.tex): the workers, the runs,
their GPU-hours and CPU-hours per run and in total, attempts cut short, the SLURM jobs.

It is built from runs.csv's and compute.csv's columns (:mod:`fmnist.report.compute`), so its
totals are the sums of the runs' figures. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from fmnist.report.formats import format_duration, format_hours, latex_escape

CUT_SHORT = {
    "deadline": "stopped before a time limit",
    "preempted": "preempted",
    "interrupted": "interrupted",
    "failed": "failed",
}
"""How attempts that did not finish the run ended (compute.csv's ``ended``), in words."""


@dataclass
class Totals:
    runs: int
    attempts: int
    wall_seconds: float
    gpu_hours: float
    cpu_hours: float


@dataclass
class Statement:
    text: str  # the paragraph, plain (Markdown without markup)
    rows: list[tuple[str, Totals]]  # one per configuration
    total: Totals


# --------------------------------------------------------------------------- numbers


def job_ranges(job_ids) -> str:
    """ "1201–1203, 1207": the job ids, sorted, consecutive ones as ranges."""
    numbers = sorted({int(j) for j in job_ids if str(j).isdigit()})
    others = sorted({str(j) for j in job_ids if not str(j).isdigit()})
    parts, i = [], 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}–{numbers[j]}")
        i = j + 1
    return ", ".join(parts + others)


def _sum(series: pd.Series) -> float:
    values = pd.to_numeric(series, errors="coerce")
    return float(values.sum()) if values.notna().any() else math.nan


def totals(runs: pd.DataFrame) -> Totals:
    """The sums of the runs' own columns (runs.csv), nothing else."""
    return Totals(
        runs=len(runs),
        attempts=int(pd.to_numeric(runs["attempts"], errors="coerce").fillna(0).sum()),
        wall_seconds=_sum(runs["wall_seconds"]),
        gpu_hours=_sum(runs["gpu_hours"]),
        cpu_hours=_sum(runs["cpu_hours"]),
    )


# --------------------------------------------------------------------------- words


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _names(cells, stage_devices, want_cuda: bool) -> list[str]:
    names = []
    for devices, labels in zip(stage_devices, cells):
        if not isinstance(devices, str) or not isinstance(labels, str):
            continue
        for device, label in zip(devices.split(","), labels.split(",")):
            if device.startswith("cuda") == want_cuda and label not in names:
                names.append(label)
    return names


def hardware(runs: pd.DataFrame) -> str:
    """What one run was given and what it ran on, e.g. "2 GPUs (NVIDIA A100) and 4 CPU
    cores per run"; several allocations are listed."""
    gpu_names = _names(runs["device_names"], runs["stage_devices"], True)
    cpu_names = _names(runs["device_names"], runs["stage_devices"], False)
    kinds = runs[["alloc_gpus", "alloc_cpus"]].drop_duplicates()
    parts = []
    for gpus, cpus in kinds.itertuples(index=False):
        gpus = 0 if pd.isna(gpus) else int(gpus)
        cpu_text = "CPU cores" if pd.isna(cpus) else plural(int(cpus), "CPU core")
        parts.append(f"{plural(gpus, 'GPU')} and {cpu_text}" if gpus else f"no GPU and {cpu_text}")
    text = " or ".join(parts) + " per run"
    if gpu_names:
        text += f"; GPUs: {', '.join(gpu_names)}"
    elif kinds["alloc_gpus"].fillna(0).gt(0).any():
        text += " (the GPUs were allocated but not used: every stage ran on the CPU)"
    text += f"; CPU: {', '.join(cpu_names)}" if cpu_names else "; CPU model not recorded"
    return text


def _cut_short(compute: pd.DataFrame) -> str:
    if compute.empty:
        return ""
    cut = compute[compute["ended"].isin(CUT_SHORT)]
    if cut.empty:
        return "No attempt was cut short."
    counts = ", ".join(
        f"{n} {CUT_SHORT[why]}" for why, n in cut["ended"].value_counts().sort_index().items()
    )
    return (
        f"The totals include {plural(len(cut), 'attempt')} cut short and resumed "
        f"({counts}; {format_hours(_sum(cut['gpu_hours']))} GPU-hours, "
        f"{format_hours(_sum(cut['cpu_hours']))} CPU-hours)."
    )


def _estimated(compute: pd.DataFrame) -> str:
    """Which wall times are estimates: attempts killed without recording their end."""
    if "wall_estimated" not in compute:
        return ""
    killed = int(compute["wall_estimated"].astype(str).eq("True").sum())
    if not killed:
        return ""
    return (
        f"The wall time of {plural(killed, 'attempt')} killed without recording its end is "
        "estimated from the epochs it checkpointed (start-up and unsaved work not included)."
    )


def _seeds(runs: pd.DataFrame) -> str:
    if "seed" not in runs:
        return ""
    seeds = pd.to_numeric(runs["seed"], errors="coerce").dropna().astype(int).unique()
    return f", {plural(len(seeds), 'seed')}" if len(seeds) else ""


def _per_run(runs: pd.DataFrame, column: str, unit: str) -> str:
    values = pd.to_numeric(runs[column], errors="coerce").dropna()
    if values.empty:
        return f"– {unit}"
    if values.min() == values.max():
        return f"{format_hours(values.min())} {unit}"
    low, high = format_hours(values.min()), format_hours(values.max())
    return f"{format_hours(values.mean())} {unit} on average ({low}–{high})"


def where(compute: pd.DataFrame) -> str:
    jobs = compute["slurm_job_id"].dropna()
    if jobs.empty:
        return "locally (no scheduler)"
    return f"as SLURM jobs ({job_ranges(jobs.astype(str))})"


def _energy_and_wait(runs: pd.DataFrame, compute: pd.DataFrame) -> str:
    energy = pd.to_numeric(runs["energy_joules"], errors="coerce")
    if energy.notna().all() and len(energy):
        words = f"Energy measured by SLURM: {energy.sum() / 3.6e6:.3g} kWh."
    else:
        words = "Energy was not measured."
    if compute["slurm_job_id"].notna().any():
        words += f" Queue wait: {format_duration(_sum(runs['queue_wait_seconds']))} in total."
    return words


def statement(runs: pd.DataFrame, compute: pd.DataFrame) -> Statement:
    """The statement for the runs that have a run.json (tutorial logs have no record)."""
    runs = runs[runs["attempts"].notna()]
    total = totals(runs)
    if not len(runs):
        return Statement("No run with a run.json: no compute to state.", [], total)
    configs = runs["configuration"].nunique()
    text = " ".join(
        [
            f"We trained {plural(total.runs, 'run')} ({plural(configs, 'configuration')}"
            f"{_seeds(runs)}) {where(compute)}, with {hardware(runs)}.",
            f"In total the runs used {format_hours(total.gpu_hours)} GPU-hours and "
            f"{format_hours(total.cpu_hours)} CPU-hours over "
            f"{plural(total.attempts, 'attempt')} ({format_duration(total.wall_seconds)} "
            "of wall time);",
            f"per run {_per_run(runs, 'gpu_hours', 'GPU-hours')} and "
            f"{_per_run(runs, 'cpu_hours', 'CPU-hours')}.",
            _cut_short(compute),
            _estimated(compute),
            _energy_and_wait(runs, compute),
            "GPU-hours and CPU-hours are allocated ones (devices held x wall time).",
        ]
    )
    rows = [(label, totals(group)) for label, group in runs.groupby("configuration", sort=False)]
    return Statement(" ".join(text.split()), rows, total)


# --------------------------------------------------------------------------- files

HEADER = ["Configuration", "Runs", "Attempts", "Wall time (h)", "GPU-hours", "CPU-hours"]


def cells(t: Totals) -> list[str]:
    return [
        str(t.runs),
        str(t.attempts),
        format_hours(t.wall_seconds / 3600),
        format_hours(t.gpu_hours),
        format_hours(t.cpu_hours),
    ]


def markdown(s: Statement) -> str:
    lines = [f"**Compute resources.** {s.text}", ""]
    if s.rows:
        lines += ["| " + " | ".join(HEADER) + " |", "| --- |" + " ---: |" * (len(HEADER) - 1)]
        for label, t in s.rows:
            lines.append("| " + " | ".join([label.replace("|", "\\|"), *cells(t)]) + " |")
        lines.append("| **Total** | " + " | ".join(cells(s.total)) + " |")
    return "\n".join(lines) + "\n"


def latex(s: Statement) -> str:
    lines = [r"\paragraph{Compute resources.} " + latex_escape(s.text), ""]
    if s.rows:
        lines += [
            "% Requires \\usepackage{booktabs}.",
            r"\begin{tabular}{l" + "r" * (len(HEADER) - 1) + "}",
            r"\toprule",
            " & ".join(HEADER) + r" \\",
            r"\midrule",
            *(" & ".join(map(latex_escape, [label, *cells(t)])) + r" \\" for label, t in s.rows),
            r"\midrule",
            " & ".join(["Total", *cells(s.total)]) + r" \\",
            r"\bottomrule",
            r"\end{tabular}",
        ]
    return "\n".join(lines) + "\n"
