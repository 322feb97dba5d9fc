"""When each stage worked on each micro-batch, for a few training steps (timeline.csv).

A Timeline takes one timestamp before and one after every forward and backward pass of a
stage on a micro-batch: the wall clock on the CPU, CUDA events on a GPU (the host only
queues the work; the events say when the GPU ran it). Times are seconds since the start
of the recorded window: in the distributed engine each rank starts its clock when a
barrier releases them together, or, on rank 0's host, takes rank 0's start (one monotonic
clock per host, so those stages line up exactly). Each row names the host whose clock
timed it and how far that clock may be off rank 0's (0 on its host).
workflow/scripts/fmnist/report/timeline_figure.py
reads the file and draws it (workflow/schemas/timeline.schema.yaml is its format).
"""

from __future__ import annotations

import csv
import io
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from fmnist.rundir.files import atomic_write_text
from fmnist.rundir.runfiles import TIMELINE_FILE

COLUMNS = [
    *("step", "stage", "microbatch", "phase", "start_seconds", "end_seconds"),
    *("host", "clock_error_seconds"),
]
FIRST_BATCH = 1  # the window skips the first batch: it warms up (and sets up the pipeline)
STEPS = 4


def window(num_batches: int) -> range:
    """The batches of an epoch whose steps are recorded."""
    first = min(FIRST_BATCH, num_batches - 1)
    return range(first, min(first + STEPS, num_batches))


class Timeline:
    """Spans of (step, stage, micro-batch, phase) on the stages' devices.

    ``devices`` maps each stage recorded here to its device (a process of the distributed
    engine records its own stage only); ``clock_error`` bounds how far this host's clock
    may be off the one of stage 0's host.
    """

    def __init__(
        self,
        devices: dict[int, torch.device],
        origin: float | None = None,
        clock_error: float = 0.0,
    ):
        self.devices = devices
        self.host, self.clock_error = socket.gethostname(), clock_error
        self.cuda = sorted({d for d in devices.values() if d.type == "cuda"}, key=str)
        self.step = 0
        self.spans: list[tuple] = []
        for device in self.cuda:
            torch.cuda.synchronize(device)
        self.origin = time.perf_counter() if origin is None else origin
        self.origins = {d: self._event(d) for d in self.cuda}

    @staticmethod
    def _event(device: torch.device):
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event

    def mark(self, stage: int):
        """A timestamp on the stage's device: now, or where its queue now stands."""
        device = self.devices[stage]
        return self._event(device) if device.type == "cuda" else time.perf_counter()

    def add(self, stage: int, microbatch: int, phase: str, start, end) -> None:
        self.spans.append((self.step, stage, microbatch, phase, start, end))

    @contextmanager
    def span(self, stage: int, microbatch: int, phase: str):
        start = self.mark(stage)
        yield
        self.add(stage, microbatch, phase, start, self.mark(stage))

    def backward(self, loss: torch.Tensor, stage_outputs: list, microbatch: int) -> None:
        """loss.backward(), timed per stage: stage s's backward runs from when the gradient
        of its output is ready (the loss, for the last stage) until the gradient of its
        input, stage s-1's output, is (a hook on that tensor). Both ends of a span are
        taken on the stage's own device: CUDA measures events of one device only."""
        last = len(stage_outputs) - 1
        starts, ends = {last: self.mark(last)}, {}

        def hook_for(s):  # the gradient of stage s's output: s + 1 is done, s begins
            def hook(grad):
                ends[s + 1] = self.mark(s + 1)
                starts[s] = self.mark(s)

            return hook

        handles = [out.register_hook(hook_for(s)) for s, out in enumerate(stage_outputs[:-1])]
        try:
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
        ends[0] = self.mark(0)
        for s in range(last, -1, -1):
            self.add(s, microbatch, "backward", starts[s], ends[s])

    def rows(self) -> list[dict]:
        """The spans as timeline.csv rows (waits for the GPUs to finish the window)."""
        for device in self.cuda:
            torch.cuda.synchronize(device)

        def seconds(stage, stamp):
            device = self.devices[stage]
            if device.type == "cuda":
                return self.origins[device].elapsed_time(stamp) / 1000
            return stamp - self.origin

        clock = (self.host, self.clock_error)
        return [
            dict(
                zip(COLUMNS, (step, stage, mb, phase, seconds(stage, a), seconds(stage, b), *clock))
            )
            for step, stage, mb, phase, a, b in self.spans
        ]


def write_timeline(out_dir: Path, rows: list[dict]) -> None:
    """timeline.csv in the run folder, rows in time order (floats written with repr)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["step"], r["start_seconds"], r["stage"])))
    atomic_write_text(out_dir / TIMELINE_FILE, text.getvalue())
