"""Stop requests: the signals that ask a run to stop, and the SLURM deadline drawing near.

StopRequests installs its signal handlers when made and puts the previous ones back when
closed (use it as a context manager), so that library users keep their own handlers. What
SLURM says about the job (its end time) comes from fmnist.cluster.slurm; this module only
decides when that means stop.
"""

from __future__ import annotations

import signal
import time

from fmnist.cluster.slurm import slurm_end_time
from fmnist.console import log

# SIGHUP: a closed terminal or ssh session, and what torchrun passes on when it gets one.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGURG)


class StopRequests:
    """Whether the run has been asked to stop: a SIGTERM/SIGINT/SIGHUP, or the SLURM deadline near.

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
        signals = STOP_SIGNALS if watch_deadline else STOP_SIGNALS[:-1]
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        if watch_deadline:
            self._read_deadline(first=True)

    def close(self) -> None:
        """Put back the signal handlers that were there before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopRequests:
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
