"""Going on in a new allocation of the same SLURM job: the job requeues itself.

A run stopped by its time limit (or a failure that may be transient) asks SLURM to requeue
its own job: the job keeps its id, the executor plugin keeps waiting on it, and no
Snakemake retry is spent, so any number of time-limit windows completes a run. A job that
SLURM itself is ending (cancelled, preempted, being requeued) is left alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from fmnist.cluster.slurm import job_id, squeue_field
from fmnist.console import log

FAILURE_COUNT_FILE = ".failure-requeues"  # in the run folder: the failures requeued so far


def scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)


def requeue_self(why: str) -> bool:
    """Requeue this process's SLURM batch job; False (and why, in the log) if it was not."""
    job = job_id()
    if job is None:
        return False
    state = squeue_field(job, "%T")  # RUNNING, CANCELLED, COMPLETING, ...
    if state != "RUNNING":
        log(f"not requeueing SLURM job {job}: it is {state or 'not visible to squeue'}")
        return False
    try:
        done = scontrol("requeue", job)
        if done.returncode != 0:  # a job submitted without --requeue may be made requeueable
            scontrol("update", f"JobId={job}", "Requeue=1")
            done = scontrol("requeue", job)
    except (OSError, subprocess.SubprocessError) as err:
        log(f"could not requeue SLURM job {job} ({err})")
        return False
    if done.returncode != 0:
        log(f"could not requeue SLURM job {job} ({done.stderr.strip()})")
        return False
    # SLURM then ends this allocation at once and holds the job back for about two minutes
    # (Reason BeginTime); an update of its StartTime from here would never run.
    log(f"requeued SLURM job {job} ({why}); it goes on from the checkpoint when it starts again")
    return True


def requeue_after_failure(run_dir: Path, budget: int, why: str) -> bool:
    """Under SLURM, requeue after a failure while the run's ``budget`` lasts; outside SLURM
    nothing is requeued and nothing is counted."""
    if job_id() is None:
        return False
    return take_failure_requeue(run_dir, budget) and requeue_self(why)


def take_failure_requeue(run_dir: Path, budget: int) -> bool:
    """Count one more failure of this run against ``budget``; False once it is spent."""
    used = failures_requeued(run_dir)
    if used >= budget:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_COUNT_FILE).write_text(f"{used + 1}\n")
    return True


def failures_requeued(run_dir: Path) -> int:
    """The failures of this run requeued so far (0 before the first)."""
    path = run_dir / FAILURE_COUNT_FILE
    return int(path.read_text()) if path.is_file() else 0
