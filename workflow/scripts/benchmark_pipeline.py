#!/usr/bin/env python3
"""Time the distributed engine (one process per stage) against the single-process engine.

Both engines run as they do in the workflow: each variant is a real train.py run in its
own subprocess (--engine distributed starts one process per stage with torchrun, gloo
between them; --engine single_process is one process), on the same data, model, seed and
batches, with one torch thread per process. The variants are interleaved over
--repetitions rounds (the machine's speed drifts; odd rounds run them in reverse order),
and each figure is reported as the best and the median over the rounds.

Variants, for every model in --models (hidden sizes joined by +; two stages, split by
FLOPs as train.py does):

  single autograd m1   single_process, --cpu-step autograd, the whole batch at once
  single autograd mM   the same with --microbatches M: the distributed runs' arithmetic
  single kernels m1    the default hand-written step (only where train.py has it: the
                       tutorial's two-layer layout)
  distributed S mM     --engine distributed --schedule S --microbatches M, for each M in
                       --microbatches and S in --schedules, 1 thread per stage process;
                       two processes, holding two stages each (four stages) for the
                       looped and V-shaped schedules

Throughput is epochs.csv's: training samples / training seconds (evaluation excluded),
over the epochs after the first --warmup-epochs. Speedups are given against the
single-process run with the same M (same numbers) and against the fastest single-process
variant of the model (by median), each as median/median and as the median of per-round
ratios; the goal (>= 1.5x) is judged on the median of per-round ratios, against both.
The same two processes check the machine: a 1-thread matmul alone, then both at once
(two free CPUs give 2x), and the CPUs' use by other processes is sampled before each run.

Pipeline figures per distributed variant, from its timeline.csv (4 steps of epoch 1,
fmnist.report.timeline_figure): the measured idle fraction beside the GPipe formula
(K-1)/(M+K-1) and the
speedup bound it implies, K*M/(M+K-1); the step's span, each stage's compute, and the span
of a zero-latency replay (the measured passes in the measured order, each starting as soon
as its stage and its input are free): span - replay is the time the step loses to
transfers and waits. Each rank's timeline clock starts when a barrier releases it, which
can be milliseconds apart; where the recorded times have a receive before its send, stage
1's times are shifted by the smallest offset that puts every receive after its send, and
the idle fraction is given aligned and as recorded. Communication is also measured
directly: each round, two gloo processes (1 thread each, torch.multiprocessing) send one
micro-batch's activation (batch/M rows x the boundary width, float32) and return a
gradient of that shape, many times (median round trip), and all-reduce one int64 (the
engine's per-step stop vote); per step that is M round trips + 1 all-reduce.

Checks that the variants are the same run: epochs.csv's epoch, train_loss, test_loss and
test_accuracy must be identical (as text) between single autograd mM and every
distributed mM, in every round ("numbers identical: yes/no"; exit status 1 if no).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import positive
from bench.pipeline_benchmark import benchmark
from bench.pipeline_report import table
from bench.pipeline_variants import (
    RunFailed,
    parse_model,
)
from fmnist.config.stages import SCHEDULE_PLACEMENT

DEFAULT_MODELS = ["1024+1024+1024", "256+1024+768+1536", "200"]


# ------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1]
        + "\nExample: python workflow/scripts/benchmark_pipeline.py --repetitions 3 "
        "--out results/benchmark_pipeline.json",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four FashionMNIST .gz files; default: generate synthetic "
        "data of --train-size/--test-size",
    )
    parser.add_argument("--train-size", type=positive, default=2000)
    parser.add_argument(
        "--test-size", type=positive, default=200, help="evaluation is not timed, but runs"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--models",
        type=parse_model,
        nargs="+",
        default=[parse_model(m) for m in DEFAULT_MODELS],
        help="hidden sizes of each model, joined by + (default: "
        + " ".join(DEFAULT_MODELS)
        + ": the issue's, one whose FLOPs split near evenly, the tutorial's)",
    )
    parser.add_argument(
        "--microbatches",
        type=positive,
        nargs="+",
        default=[4, 10],
        help="micro-batch counts M of the distributed runs; each must divide --batch-size "
        "(default: 4 10; 8 does not divide 100)",
    )
    parser.add_argument(
        "--schedules",
        nargs="+",
        choices=list(SCHEDULE_PLACEMENT),
        default=list(SCHEDULE_PLACEMENT),
        help="train.schedule values (default: all); those holding several stages per process "
        "run two per process, four stages, where the model has a layer for each",
    )
    parser.add_argument("--epochs", type=positive, default=2, help="epochs per run")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="first epochs left out of samples/s (they include start-up and the timeline "
        "recording)",
    )
    parser.add_argument("--repetitions", type=positive, default=2, help="interleaved rounds")
    parser.add_argument("--batch-size", type=positive, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--activation",
        choices=["log_softmax", "relu"],
        default="log_softmax",
        help="as train.py's, for every model (default: the tutorial's log_softmax)",
    )
    parser.add_argument(
        "--adam-impl",
        choices=["for_loop", "foreach", "fused"],
        default="for_loop",
        help="as train.py's, for every run (default: train.py's for_loop)",
    )
    parser.add_argument(
        "--comm-repeats",
        type=positive,
        default=300,
        help="round trips per shape in each round's communication benchmark",
    )
    parser.add_argument(
        "--keep-runs", type=Path, help="keep the run folders here (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error("--warmup-epochs must be at least 0 and below --epochs")
    bad = [m for m in args.microbatches if args.batch_size % m]
    if bad:
        parser.error(
            f"--microbatches {bad} do not divide --batch-size {args.batch_size}: the "
            "distributed engine needs equal micro-batches"
        )
    if args.keep_runs is not None and args.keep_runs.exists() and any(args.keep_runs.iterdir()):
        parser.error(f"--keep-runs {args.keep_runs} is not empty (train.py would resume)")
    args.microbatches = sorted(set(args.microbatches))
    args.models = list(dict.fromkeys(args.models))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        report = benchmark(args, argv)
    except RunFailed as err:
        print(f"benchmark_pipeline.py: error: {err}", file=sys.stderr)
        return 2
    print()
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["identity"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
