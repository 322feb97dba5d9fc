#!/usr/bin/env python3
"""Time the tutorial's training loop against the workflow's, and both against the machine.

In one process, on the same data, with the same model, hyperparameters and stage
devices, interleaved over --repetitions rounds (the machine's speed drifts, so
variants are compared round by round), it times:

  (a) tutorial  the tutorial's loop as written: torchvision's FashionMNIST
                (download=False, on IDX files in torchvision's raw layout), DataLoader
                (batch_size, shuffle=True), ToTensor per sample, torch.div(images, 255.),
                .item() every step; its SeqNet with the stage devices given.
  (b) workflow  one epoch of train.py's Trainer (BatchMaker + KernelStep) per round, for
                each --adam-impls setting, for --microbatches > 1 (for_loop), and with
                train.py's AutogradStep instead of KernelStep (the hot path before
                KernelStep: autograd, zero_grad, optimizer.step()).
  (c) floor     one fixed batch, no data movement, the step repeated: eager autograd
                with for_loop Adam (zero_grad to None and to zero) and fused Adam;
                train.py's KernelStep; and the step's matmuls alone (the bound).

Each variant reports samples/s (best and median over the rounds), its ratio to (a)
(best/best, median/median, and the median of the per-round ratios) and the GFLOP/s
that its samples/s means (see step_flops). A large square sgemm gives the machine's
matmul peak. A (threads, variant) pair is one training run: round r is its epoch r,
so the workflow's losses are train.py's for the same settings and --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.common import positive
from bench.step_benchmark import benchmark, table
from fmnist.engine.step import ADAM_IMPLS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python workflow/scripts/benchmark.py --threads 1 2 --repetitions 3 "
        "--out results/benchmark.json",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four FashionMNIST .gz files; default: generate synthetic "
        "data of --train-size/--test-size",
    )
    parser.add_argument("--train-size", type=positive, default=60000)
    parser.add_argument("--test-size", type=positive, default=10000)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--repetitions", type=positive, default=3, help="interleaved rounds")
    cpus = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--threads",
        type=positive,
        nargs="+",
        default=sorted({1, cpus}),
        help=f"torch thread counts to compare, interleaved (default: 1 and {cpus})",
    )
    parser.add_argument(
        "--devices", nargs="+", default=["cpu", "cpu"], help="as train.py's (or auto)"
    )
    parser.add_argument("--batch-size", type=positive, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden-size", type=positive, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--adam-impls",
        nargs="+",
        choices=sorted(ADAM_IMPLS),
        default=["for_loop", "foreach", "fused"],
    )
    parser.add_argument(
        "--microbatches",
        type=positive,
        nargs="+",
        default=[1, 2, 4],
        help="GPipe micro-batch counts for the workflow (for_loop)",
    )
    parser.add_argument(
        "--floor-steps", type=positive, help="steps per round of (c) (default: an epoch's)"
    )
    parser.add_argument("--sgemm-size", type=positive, default=2048)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if max(args.microbatches) > args.batch_size:
        parser.error("--microbatches cannot exceed --batch-size")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = benchmark(args, argv)
    print()
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
