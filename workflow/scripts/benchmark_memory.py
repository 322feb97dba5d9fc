#!/usr/bin/env python3
"""Measure how memory scales with the stage: each process's peak resident memory.

For each --models entry (hidden sizes joined by +, then :K for K stages), four train.py
runs of one epoch on synthetic data (two steps: the model, not the data, is measured): the
single-process engine and the distributed engine with K processes, each with the model and
with a tiny one (hidden size 10: torch itself, the data and the process group, the fixed
part). What the model adds to each process (its peak minus the tiny model's) is reported
against what it adds to the single process, beside what the training state takes (4
float32 per weight: the weight, its gradient and Adam's two moments; torch's for-loop Adam
also makes temporaries of its largest parameter's size).

Then --limit-model runs under a per-process address-space limit (--limit-gb, RLIMIT_AS, what
ulimit -v sets): the single process (expected to fail: out of memory), the two-stage run
(two epochs: stopped with SIGTERM after the first, resumed, finished, all under the limit),
and the single process without a limit, whose numbers the two-stage run must repeat.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.common import positive, prepare_data
from bench.machine import environment
from bench.memory import over_the_limit, scaling


def model_and_stages(text: str) -> tuple[list[int], int]:
    sizes, _, stages = text.partition(":")
    return [positive(s) for s in sizes.split("+")], positive(stages or "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1]
        + "\nExample: python workflow/scripts/benchmark_memory.py --out results/memory.json",
    )
    parser.add_argument("--data-dir", type=Path, help="default: synthetic data")
    parser.add_argument("--train-size", type=positive, default=200)
    parser.add_argument("--test-size", type=positive, default=100)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument(
        "--models",
        type=model_and_stages,
        nargs="+",
        default=[model_and_stages("16384+784:2"), model_and_stages("8192+784+8192:3")],
        help="hidden sizes joined by +, then :K stages (default: 16384+784:2 "
        "8192+784+8192:3, stages of near-equal size)",
    )
    parser.add_argument(
        "--limit-model",
        type=lambda text: None if text == "none" else model_and_stages(text),
        default=model_and_stages("131072+784:2"),
        help="the model trained under --limit-gb (default 131072+784: 206 M weights, 3.1 GB "
        "with gradients and Adam); none: skip",
    )
    parser.add_argument("--limit-gb", type=float, default=7.0, help="per-process address space")
    parser.add_argument("--keep-runs", type=Path, help="keep the run folders here")
    parser.add_argument("--out", type=Path, required=True, help="the JSON of everything measured")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep_runs or Path(tmp)
        data, data_made = prepare_data(args, Path(tmp))
        results = {"environment": environment(), "data": data_made, "command": sys.argv}
        results["scaling"] = []
        for hidden, stages in args.models:
            found = scaling(data, root, hidden, stages)
            results["scaling"].append(found)
            print(json.dumps(found), flush=True)
        if args.limit_model is not None:
            hidden, _ = args.limit_model
            results["limit"] = over_the_limit(data, root, hidden, args.limit_gb)
            print(json.dumps(results["limit"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
