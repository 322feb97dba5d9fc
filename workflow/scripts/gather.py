"""Gather run folders and tutorial logs into tables (the command line of fmnist.gathering).

Each input PATH is either a run folder ``results/runs/{run_id}/`` holding ``epochs.csv``
and ``run.json`` (written by training), or a plain-text log of the original tutorial
(``Epoch [1/10], Loss: 0.5234`` lines; its run id is the file name without extension).

Writes into ``--out DIR``: epochs.csv, runs.csv, summary.csv (one row per configuration:
mean, sample std and 95 % CI over seeds), summary.md, summary.tex and provenance.csv.
An invalid input is an error naming the file, and nothing is written.

Must not import torch: gathering has to stay fast.
"""

from __future__ import annotations

import argparse
import sys

from fmnist.gathering import gather_runs
from fmnist.runfiles import RunFileError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gather.py",
        description=(
            "Gather run folders (epochs.csv + run.json) and tutorial logs "
            "('Epoch [i/n], Loss: x' lines) into epochs.csv, runs.csv, "
            "summary.csv, summary.md, summary.tex and provenance.csv (run folders only)."
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
        help="leave out run folders that do not hold their finished run (said on stderr and "
        "under the summary tables) instead of failing",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder or tutorial log file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        gather_runs(args.paths, args.out, args.skip_bad_lines, args.skip_incomplete)
    except RunFileError as err:
        print(f"gather.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
