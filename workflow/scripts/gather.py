"""Gather run folders and tutorial logs into tables (the command line of fmnist.report.gathering).

Each input PATH is either a run folder ``results/runs/{run_id}/`` holding ``epochs.csv``
and ``run.json`` (written by training), or a plain-text log of the original tutorial
(``Epoch [1/10], Loss: 0.5234`` lines; its run id is the file name without extension).

Writes into ``--out DIR``: epochs.csv, runs.csv, summary.csv (one row per configuration:
mean, sample std and 95 % CI over seeds, compute totals), summary.md, summary.tex,
provenance.csv, compute.csv (one row per attempt: wall time, queue wait, allocated GPUs,
CPUs and memory, GPU-hours, CPU-hours, MaxRSS, energy) and the compute statement
compute.md and compute.tex. An invalid input is an error naming the file (and line and
column), and nothing is written. A run folder still training (no run.json yet) or short of
its epochs, and a tutorial log without some of its epochs, is incomplete: an error, or left
out and said so with --skip-incomplete.

Compute comes from ``sacct`` for runs that were SLURM jobs (``--sacct auto``: asked on
this machine, e.g. the login node; or a file holding ``sacct -D --parsable2`` output),
from Snakemake's benchmark files (``--benchmarks DIR``, ``DIR/{run}.tsv``) for local
runs, and from run.json's attempts otherwise.

The report's pages are made from these files by render_pages.py.

Must not import torch: gathering has to stay fast.
"""

from __future__ import annotations

import argparse
import sys

from fmnist.cluster.sacct import FIELDS
from fmnist.report.gathering import gather_runs
from fmnist.rundir.files import WriteError
from fmnist.rundir.runfiles import IncompleteRunError, RunFileError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gather.py",
        description=(
            "Gather run folders (epochs.csv + run.json) and tutorial logs "
            "('Epoch [i/n], Loss: x' lines) into epochs.csv, runs.csv, "
            "summary.csv, summary.md, summary.tex, provenance.csv, compute.csv, compute.md "
            "and compute.tex (the last four: run folders only)."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip malformed epoch lines in tutorial logs (reported on stderr) instead of failing",
    )
    parser.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="leave out run folders that are still training (no run.json yet) or do not hold "
        "their finished run, and tutorial logs without some of their epochs (said on stderr and "
        "under the summary tables) instead of failing",
    )
    parser.add_argument(
        "--sacct",
        default="auto",
        metavar="auto|never|FILE",
        help="SLURM accounting of the runs' jobs: auto (ask sacct when a run was a SLURM job; "
        "if it cannot be asked, say so and use run.json's times), never, or a file with the "
        "output of `sacct -D --parsable2 -o " + ",".join(FIELDS) + "` (default: auto)",
    )
    parser.add_argument(
        "--benchmarks",
        metavar="DIR",
        help="Snakemake benchmark files of the training jobs, DIR/{run}.tsv "
        "(e.g. results/benchmarks/train_model_parallel)",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder or tutorial log file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        gather_runs(
            args.paths,
            args.out,
            args.skip_bad_lines,
            args.skip_incomplete,
            sacct_source=args.sacct,
            benchmark_dir=args.benchmarks,
        )
    except RunFileError as err:
        hint = " (--skip-incomplete leaves it out)" if isinstance(err, IncompleteRunError) else ""
        print(f"gather.py: error: {err}{hint}", file=sys.stderr)
        return 1
    except WriteError as err:  # a full disk, a read-only folder, a folder in a table's place
        print(f"gather.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
