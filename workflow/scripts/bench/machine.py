"""The machine under a CPU benchmark: what it is, and how much of it other processes take.

A benchmark that times one thread per process against another needs CPUs that nothing
else uses; others_busy samples the CPUs' use (Linux /proc/stat) while the benchmark runs
nothing, so that a report can say when its figures were disturbed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from fmnist.engine.devices import device_name
from fmnist.engine.run_record import package_version

QUIET = 0.1
"""Other processes' median busy fraction below which the machine counts as quiet."""


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + fields[4]  # all, idle + iowait


def others_busy(seconds: float = 0.2) -> float | None:
    """The machine's busy fraction over ``seconds`` while this benchmark runs nothing:
    what other processes take (Linux /proc/stat; None elsewhere)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[0] == before[0]:
        return None
    return 1 - (after[1] - before[1]) / (after[0] - before[0])


def quietness(busy: list) -> dict:
    """What other processes took of the CPUs in the 0.2 s before each run."""
    known = [b for b in busy if b is not None]
    return {
        "what": "busy fraction of all CPUs in the 0.2 s before each run, while the benchmark "
        "ran nothing (other processes' load)",
        "before_each_run": busy,
        "median": statistics.median(known) if known else None,
        "max": max(known) if known else None,
        "quiet": bool(known) and statistics.median(known) < QUIET,
    }


def environment(devices=()) -> dict:
    """The machine and software a benchmark ran on (and the names of its ``devices``)."""
    return {
        "hostname": platform.node(),
        "cpu": device_name(torch.device("cpu")),
        "devices": [device_name(d) for d in devices],
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(),
        "interop_threads": torch.get_num_interop_threads(),
        "gloo": dist.is_gloo_available(),
        "numpy": package_version("numpy"),
        "python": platform.python_version(),
    }
