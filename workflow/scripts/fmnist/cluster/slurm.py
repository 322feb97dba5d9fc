"""The SLURM job this process runs in, as SLURM describes it: its variables and what squeue
says of it (its end time, its state). Reading only: stop.py and requeue.py act on it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

from fmnist.console import log


def job_id() -> str | None:
    """This process's SLURM job, or None outside SLURM."""
    return os.environ.get("SLURM_JOB_ID") or None


def squeue_field(job: str, field: str) -> str | None:
    """One field of squeue's line for ``job`` (e.g. %T, its state), or None if unreadable."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", field], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def slurm_end_time() -> float | None:
    """The job's end time (epoch seconds) from squeue, or None outside SLURM."""
    job = job_id()
    if job is None:
        return None
    text = squeue_field(job, "%e")
    try:
        return dt.datetime.fromisoformat(text or "").timestamp()  # local time, as SLURM prints
    except ValueError:
        log(f"could not read the SLURM end time (squeue said {text!r}); relying on signals")
        return None


def slurm_job() -> dict | None:
    """The SLURM job this process runs in, from the variables SLURM sets (None outside)."""
    if job_id() is None:
        return None
    return {
        "job_id": os.environ["SLURM_JOB_ID"],
        "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "node": os.environ.get("SLURMD_NODENAME"),
        # Not always in the job's environment (Snakemake's job step drops SLURM_* there).
        "account": os.environ.get("SLURM_JOB_ACCOUNT") or squeue_field(job_id(), "%a"),
        "gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_GPUS"),
        # A sweep submitted as a job array: its array job and this run's task in it.
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
