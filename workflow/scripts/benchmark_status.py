#!/usr/bin/env python3
"""Time status.py on a workflow folder of many fake runs (1000 by default).

The runs are those of a sweep over seeds, in every state status.py tells apart: of every
ten, five finished, one training in the middle of an epoch (a checkpoint and its
checkpoint.json, a progress line in its log), one stopped, one failed, one queued and one
not started. status.py runs as a user runs it, a new interpreter each time, --repetitions
times: once reading the run folders alone (--no-slurm), and once with stand-ins for squeue
and sacct on PATH that answer for the queued and failed runs' jobs as a cluster would (the
time of a real cluster's answer is its own, and not included). Prints the best and median
seconds of each, and of the imports alone; --json FILE writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import positive
from bench.status_benchmark import make_workflow, time_imports, time_status


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark_status.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=positive, default=1000, help="fake runs (default 1000)")
    parser.add_argument("--repetitions", type=positive, default=5, help="timings of each")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="make the fake workflow here and keep it"
    )
    return parser.parse_args(argv)


def machine() -> dict:
    """Where it ran (without torch: status.py never imports it, nor does this)."""
    return {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
    }


def figures(seconds: list[float]) -> dict:
    return {"best": min(seconds), "median": statistics.median(seconds), "all": seconds}


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        workdir, bin_dir, states = make_workflow(root, args.runs, slurm=True)
        results = {"runs": args.runs, "states": states, "machine": machine()}
        output = ""
        for name, slurm in (("run folders alone", False), ("with squeue and sacct", True)):
            timings = []
            for _ in range(args.repetitions):
                seconds, output = time_status(workdir, bin_dir if slurm else None, slurm)
                timings.append(seconds)
            results[name] = figures(timings)
        results["imports alone"] = figures([time_imports() for _ in range(args.repetitions)])
    print(output.splitlines()[-1])  # the total line of the last run
    print(f"status.py on {args.runs} runs, seconds (best / median of {args.repetitions}):")
    for name in ("run folders alone", "with squeue and sacct", "imports alone"):
        print(f"  {name:24s} {results[name]['best']:6.2f} / {results[name]['median']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
