"""What each run cost: its attempts, why each ended, their wall time, GPU-hours and CPU-hours.

Sources, best first:

* **sacct** (under SLURM; :mod:`fmnist.cluster.sacct`): every allocation of the run's jobs, also
  those of a requeued job (one record per start, ``sacct -D``), with AllocTRES, Elapsed,
  queue wait, MaxRSS and ConsumedEnergy. A job's records count only if one of them
  contains an attempt of the run in time (its start lies within the allocation), so a job
  id of another cluster, or one that accounting purged and reused, never counts.
  Allocations no attempt of the run recorded (a start that died before its first
  checkpoint) are counted too: they were paid for.
* **benchmark** (local runs): Snakemake's ``benchmark:`` file of the training job, written
  by its last job: that attempt's wall time and max RSS.
* **run.json**: each attempt's own start and end (to the second); the GPUs and CPUs it had
  (the CUDA devices its stages used, or SLURM's GPU list; its thread count times its stage
  processes). An attempt killed outright (no end recorded, resumed by the next) is counted
  with the training seconds of the epochs it checkpointed, marked ``wall_estimated``: its
  start-up and its work after its last checkpoint are not recorded anywhere.

GPU-hours and CPU-hours are allocated ones: GPUs (CPUs) held x wall time, as clusters
bill them, whether or not the run kept them busy. Imports no torch.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fmnist.cluster import sacct
from fmnist.report.formats import is_missing
from fmnist.rundir.runfiles import Run

ATTEMPT_COLUMNS = [
    "run_id",
    "attempt",
    "slurm_job_id",
    "source",
    "ended",
    "slurm_state",
    "host",
    "started",
    "wall_seconds",
    "wall_estimated",
    "queue_wait_seconds",
    "alloc_gpus",
    "alloc_cpus",
    "alloc_mem_mb",
    "gpu_hours",
    "cpu_hours",
    "max_rss_mb",
    "energy_joules",
]
"""compute.csv: one row per attempt (under SLURM: per allocation)."""

RUN_COLUMNS = [
    "attempts",
    "attempt_ends",
    "attempt_wall_seconds",
    *ATTEMPT_COLUMNS[ATTEMPT_COLUMNS.index("wall_seconds") :],
    "compute_source",
]
"""The compute columns of runs.csv (totals over the run's attempts; allocation of the last)."""

STOP_REASONS = {
    "the SLURM time limit is near": "deadline",
    "received SIGURG": "deadline",  # SLURM's warning signal with no end time known
    "received SIGTERM": "preempted",  # what SLURM sends on preemption (and scancel)
    "received SIGINT": "interrupted",
}
SLURM_ENDS = {
    "COMPLETED": "finished",
    "TIMEOUT": "deadline",
    "DEADLINE": "deadline",
    "PREEMPTED": "preempted",
    "RUNNING": "running",
    "PENDING": "running",
    "REQUEUE_HOLD": "running",
    "SUSPENDED": "running",
}
"""An allocation no attempt recorded ended as its state says; any other state (FAILED,
CANCELLED, NODE_FAIL, OUT_OF_MEMORY, REQUEUED: requeued without a checkpoint) is failed."""
MATCH_SLACK = dt.timedelta(seconds=5)  # clocks of the node and of accounting


@dataclass
class Accounting:
    """What gathering knows about the runs' jobs besides their run.json."""

    allocations: dict[str, list[sacct.Allocation]] = field(default_factory=dict)
    benchmarks: dict[str, dict] = field(default_factory=dict)  # by run folder name
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def read_benchmark(path: Path) -> dict | None:
    """The last row of a Snakemake benchmark file (s, max_rss, cpu_time, ...), or None."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError:
        return None
    if not rows:
        return None
    values = {}
    for key, text in rows[-1].items():
        try:
            values[key] = float(text)
        except (TypeError, ValueError):
            values[key] = math.nan
    return values


def slurm_job_ids(runs: list[Run]) -> list[str]:
    ids = []
    for run in runs:
        for attempt in (run.record or {}).get("attempts", []):
            if attempt["slurm"] is not None and attempt["slurm"]["job_id"] not in ids:
                ids.append(attempt["slurm"]["job_id"])
    return ids


def earliest_start(runs: list[Run]) -> dt.datetime | None:
    starts = [parse_iso(a["started"]) for r in runs for a in (r.record or {}).get("attempts", [])]
    starts = [s for s in starts if s is not None]
    return min(starts) - dt.timedelta(days=1) if starts else None


def load_accounting(runs, sacct_source="auto", benchmark_dir=None, tz=None) -> Accounting:
    """Benchmarks from ``benchmark_dir`` ({run}.tsv); sacct's records of the runs' jobs:
    ``sacct_source`` "auto" (ask sacct if any run was a SLURM job; a failure is a note),
    "never", or a file holding sacct's output (recorded, or fetched elsewhere)."""
    accounting = Accounting()
    if benchmark_dir is not None:
        for run in runs:
            found = read_benchmark(Path(benchmark_dir) / f"{run.source.name}.tsv")
            if found is not None:
                accounting.benchmarks[run.source.name] = found
    job_ids = slurm_job_ids(runs)
    if not job_ids or sacct_source == "never":
        return accounting
    try:
        if sacct_source == "auto":
            text = sacct.query(job_ids, earliest_start(runs))
        else:
            text = Path(sacct_source).read_text()
        accounting.allocations = sacct.parse(text, tz)
    except (OSError, sacct.SacctError) as err:
        accounting.notes.append(
            f"SLURM accounting not read ({err}): times are the attempts' own, from run.json"
        )
    return accounting


def parse_iso(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


# --------------------------------------------------------------------------- attempts


def attempt_end(attempt: dict, is_last: bool) -> str:
    """finished, deadline, preempted, interrupted or failed, from run.json."""
    if "stopped" in attempt:
        return STOP_REASONS.get(attempt["stopped"], "interrupted")
    if "finished" in attempt:
        return "finished"
    return "running" if is_last else "failed"  # it died: the next attempt resumed


def stage_gpus(record: dict, attempt: dict) -> int:
    """GPUs the attempt's stages used. The distributed engine's processes each hold a GPU of
    their own (it refuses two on one), though under srun each names it cuda:0; one process
    uses its distinct CUDA devices."""
    if attempt.get("ranks"):
        return sum(rank["device"].startswith("cuda") for rank in attempt["ranks"])
    return len({d for d in record["setup"]["devices"] if d.startswith("cuda")})


def stage_processes(record: dict, attempt: dict) -> int:
    """The processes that trained in the attempt: one per stage for the distributed engine
    (its ranks; the setup's world_size), else one."""
    if attempt.get("ranks"):
        return len(attempt["ranks"])
    return int(record["setup"].get("world_size", 1))


def _attempt_cpus(record: dict, attempt: dict) -> float:
    """CPU cores the attempt held: each process's thread count (setup.threads) times its
    processes."""
    return float(record["setup"]["threads"] * stage_processes(record, attempt))


def _attempt_gpus(record: dict, attempt: dict) -> float:
    """GPUs the attempt held: SLURM's list for the job (SLURM_JOB_GPUS), else the CUDA
    devices its stages used."""
    slurm = attempt["slurm"] or {}
    if slurm.get("gpus"):
        return float(len(str(slurm["gpus"]).split(",")))
    return float(stage_gpus(record, attempt))


def _hours(count: float, seconds: float) -> float:
    return count * seconds / 3600 if not (math.isnan(count) or math.isnan(seconds)) else math.nan


def _row(run: Run, **values) -> dict:
    row = dict.fromkeys(ATTEMPT_COLUMNS, math.nan)
    row.update({"run_id": run.run_id, "wall_estimated": False, **values})
    row["gpu_hours"] = _hours(row["alloc_gpus"], row["wall_seconds"])
    row["cpu_hours"] = _hours(row["alloc_cpus"], row["wall_seconds"])
    return row


def checkpointed_seconds(run: Run, index: int) -> float:
    """The wall time a killed attempt's checkpoints prove: from its start to its last
    checkpoint where run.json records that; in older records, the training seconds of the
    epochs it finished (from its start epoch to the one the next attempt resumed at), at most
    the time until the next attempt started. A lower bound either way: the work after the
    last checkpoint is lost with it (older records also leave out start-up and evaluation,
    and count an epoch it resumed mid-way whole)."""
    attempt, following = run.record["attempts"][index : index + 2]
    if "checkpointed" in attempt:  # measured: from its start to its last checkpoint
        return (parse_iso(attempt["checkpointed"]) - parse_iso(attempt["started"])).total_seconds()
    first, resumed_at = attempt["start_epoch"], following["start_epoch"]
    seconds = sum(
        float(s)
        for epoch, s in zip(run.epochs["epoch"], run.epochs.get("epoch_seconds", []))
        if first <= epoch < resumed_at and not is_missing(s)
    )
    gap = (parse_iso(following["started"]) - parse_iso(attempt["started"])).total_seconds()
    return min(seconds, gap)


def record_row(run: Run, index: int, benchmark: dict | None) -> dict:
    """An attempt as run.json (and, for the last one of a local run, the benchmark) saw it;
    a killed one by what its checkpoints prove (:func:`checkpointed_seconds`)."""
    attempts = run.record["attempts"]
    attempt, is_last = attempts[index], index == len(attempts) - 1
    started, finished = parse_iso(attempt["started"]), parse_iso(attempt.get("finished"))
    wall = (finished - started).total_seconds() if finished else math.nan
    killed = finished is None and not is_last
    if killed:
        wall = checkpointed_seconds(run, index)
    source, rss = "run.json", math.nan
    if is_last and benchmark is not None and attempt["slurm"] is None:
        source, wall, rss = "benchmark", benchmark.get("s", wall), benchmark.get("max_rss", rss)
    slurm = attempt["slurm"] or {}
    return _row(
        run,
        slurm_job_id=slurm.get("job_id", math.nan),
        source=source,
        ended=attempt_end(attempt, is_last),
        host=slurm.get("node") or attempt["hostname"],
        started=attempt["started"],
        wall_seconds=wall,
        wall_estimated=killed,
        alloc_gpus=_attempt_gpus(run.record, attempt),
        alloc_cpus=_attempt_cpus(run.record, attempt),
        max_rss_mb=rss,
    )


def allocation_row(run: Run, allocation: sacct.Allocation, attempt: dict | None, last: bool):
    if attempt is not None:
        ended = attempt_end(attempt, last)
    else:
        ended = SLURM_ENDS.get(allocation.state, "failed")
    return _row(
        run,
        slurm_job_id=allocation.job_id,
        source="sacct",
        ended=ended,
        slurm_state=allocation.state,
        host=allocation.nodes or (attempt or {}).get("hostname", math.nan),
        started=allocation.start.isoformat() if allocation.start else math.nan,
        wall_seconds=allocation.elapsed_seconds,
        queue_wait_seconds=allocation.queue_wait_seconds,
        alloc_gpus=allocation.gpus,
        alloc_cpus=allocation.cpus,
        alloc_mem_mb=allocation.mem_mb,
        max_rss_mb=allocation.max_rss_mb,
        energy_joules=allocation.energy_joules,
    )


def contains(allocation: sacct.Allocation, moment: dt.datetime | None) -> bool:
    if allocation.start is None or moment is None:
        return False
    end = allocation.end or dt.datetime.now(dt.UTC)
    return allocation.start - MATCH_SLACK <= moment <= end + MATCH_SLACK


def match_attempts(attempts: list[dict], allocations: list) -> dict[int, int]:
    """{allocation index: attempt index}: the allocation each attempt started in."""
    matched: dict[int, int] = {}
    for a, attempt in enumerate(attempts):
        started = parse_iso(attempt["started"])
        for i, allocation in enumerate(allocations):
            if i not in matched and contains(allocation, started):
                matched[i] = a
                break
    return matched


def _job_rows(run: Run, job_id: str, allocations: list) -> list[dict] | None:
    """Rows for every allocation of one SLURM job of the run, or None when no attempt of
    the run lies in any of them (accounting of another job by that id)."""
    attempts = run.record["attempts"]
    own = [i for i, a in enumerate(attempts) if (a["slurm"] or {}).get("job_id") == job_id]
    matched = match_attempts([attempts[i] for i in own], allocations)
    if not matched:
        return None
    rows = []
    for i, allocation in enumerate(allocations):
        index = own[matched[i]] if i in matched else None
        attempt = attempts[index] if index is not None else None
        rows.append(allocation_row(run, allocation, attempt, index == len(attempts) - 1))
    return rows


def attempt_rows(run: Run, accounting: Accounting) -> list[dict]:
    """compute.csv's rows of one run, in the order the attempts ran."""
    if run.record is None:
        return []
    attempts, rows, done_jobs = run.record["attempts"], [], set()
    benchmark = accounting.benchmarks.get(run.source.name)
    for index, attempt in enumerate(attempts):
        job_id = (attempt["slurm"] or {}).get("job_id")
        if job_id is not None and job_id in done_jobs:
            continue
        job_rows = None
        if job_id is not None and job_id in accounting.allocations:
            job_rows = _job_rows(run, job_id, accounting.allocations[job_id])
        if job_rows is not None:
            done_jobs.add(job_id)
            rows += job_rows
        else:
            rows.append(record_row(run, index, benchmark))
    for number, row in enumerate(rows, start=1):
        row["attempt"] = number
    return rows


# --------------------------------------------------------------------------- per run


def _total(values) -> float:
    known = [v for v in values if not is_missing(v)]
    return float(sum(known)) if known else math.nan


def _cell(value) -> str:
    return "" if is_missing(value) else f"{value:g}"


def run_compute(rows: list[dict]) -> dict:
    """runs.csv's compute columns from one run's attempt rows."""
    if not rows:
        return dict.fromkeys(RUN_COLUMNS, math.nan)
    last = rows[-1]
    energies = [r["energy_joules"] for r in rows]
    return {
        "attempts": len(rows),
        "attempt_ends": ",".join(r["ended"] for r in rows),
        "attempt_wall_seconds": ",".join(_cell(r["wall_seconds"]) for r in rows),
        "wall_seconds": _total(r["wall_seconds"] for r in rows),
        "wall_estimated": any(r["wall_estimated"] for r in rows),
        "queue_wait_seconds": _total(r["queue_wait_seconds"] for r in rows),
        "alloc_gpus": last["alloc_gpus"],
        "alloc_cpus": last["alloc_cpus"],
        "alloc_mem_mb": last["alloc_mem_mb"],
        "gpu_hours": _total(r["gpu_hours"] for r in rows),
        "cpu_hours": _total(r["cpu_hours"] for r in rows),
        "max_rss_mb": max(
            (r["max_rss_mb"] for r in rows if not is_missing(r["max_rss_mb"])), default=math.nan
        ),
        # Blank unless every attempt was measured: a partial sum would look complete.
        "energy_joules": math.nan if any(map(is_missing, energies)) else float(sum(energies)),
        "compute_source": ",".join(dict.fromkeys(r["source"] for r in rows)),
    }


def rows_by_run(runs: list[Run], accounting: Accounting) -> dict[str, list[dict]]:
    """Each run's attempt rows (compute.csv), by run id."""
    return {run.run_id: attempt_rows(run, accounting) for run in runs}


def compute_table(rows: dict[str, list[dict]]) -> pd.DataFrame:
    """compute.csv: every run's attempt rows, in the runs' order."""
    flat = [row for run_rows in rows.values() for row in run_rows]
    return pd.DataFrame(flat, columns=ATTEMPT_COLUMNS)


def run_columns(runs: list[Run], rows: dict[str, list[dict]]) -> pd.DataFrame:
    """runs.csv's compute columns, one row per run, in the order of ``runs``."""
    data = [run_compute(rows.get(run.run_id, [])) for run in runs]
    table = pd.DataFrame(data, columns=RUN_COLUMNS)
    table["attempts"] = pd.Series(table["attempts"].tolist(), dtype="Int64")
    return table
