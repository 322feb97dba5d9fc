"""The cluster: when a SLURM job must stop (its end time, SIGTERM, the warning signal).

StopWatch installs its signal handlers when made and puts the previous ones back when
closed (use it as a context manager), so that library users keep their own handlers.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time

from .console import log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGURG)


class StopWatch:
    """Says when to stop early: on SIGTERM/SIGINT, or when the SLURM deadline is near.

    The deadline comes from squeue. SLURM's warning signal (SIGURG, `--signal=URG@N`)
    can arrive up to ~60 s before it is due, so while the end time is known it only
    makes us read the end time again (an admin may have changed the limit); without
    a known end time it means stop.
    """

    def __init__(self, margin_seconds: float, watch_deadline: bool = True):
        self.margin = margin_seconds
        self.reason = None
        self.deadline = None
        self.recheck = False
        # Without the deadline (stage processes but rank 0's), SIGURG is left ignored.
        signals = STOP_SIGNALS if watch_deadline else (signal.SIGTERM, signal.SIGINT)
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        if watch_deadline:
            self._read_deadline(first=True)

    def close(self) -> None:
        """Put back the signal handlers that were there before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_deadline(self, first: bool = False) -> None:
        end = slurm_end_time()
        if end is None:
            return
        left = end - time.time()
        margin = self.margin
        if left <= margin and first:
            # Still make progress: the margin must leave room for work.
            log(f"only {left:.0f} s left, below the {margin:.0f} s margin: using half")
            margin = self.margin = left / 2
        self.deadline = end - margin
        log(f"SLURM time limit in {left:.0f} s; will stop {margin:.0f} s before it")

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGURG and self.deadline is not None:
            self.recheck = True  # squeue is not called from a signal handler
        else:
            self.reason = f"received {signal.Signals(signum).name}"

    def should_stop(self) -> bool:
        if self.recheck:
            self.recheck = False
            self._read_deadline()
        if self.reason is None and self.deadline is not None and time.time() >= self.deadline:
            self._read_deadline()  # once more: the limit may have been extended meanwhile
            if time.time() >= self.deadline:
                self.reason = "the SLURM time limit is near"
        return self.reason is not None


def slurm_end_time():
    """The job's end time (epoch seconds) from squeue, or None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return dt.datetime.fromisoformat(out).timestamp()  # local time, like SLURM prints it
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        log(f"could not read the SLURM end time ({err}); relying on signals")
        return None


def slurm_job() -> dict | None:
    """The SLURM job this process runs in, from the variables SLURM sets (None outside)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    return {
        "job_id": os.environ["SLURM_JOB_ID"],
        "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "account": os.environ.get("SLURM_JOB_ACCOUNT"),
        "gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_GPUS"),
        # A sweep submitted as a job array: its array job and this run's task in it.
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
