"""Plot the tables gather.py wrote (the command line of fmnist.report.figures).

Reads epochs.csv and runs.csv and writes loss, accuracy and throughput figures, each as
PNG and PDF, into ``--out-dir``; one line per configuration, as runs.csv's
``configuration`` column names them. Output bytes are deterministic.

Must not import torch.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from fmnist.report.figures import plot_all


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="plot.py",
        description="Plot loss, accuracy and throughput from gather.py's tables "
        "(loss/accuracy/throughput .png and .pdf).",
    )
    parser.add_argument("--epochs", required=True, help="epochs.csv from gather.py")
    parser.add_argument("--runs", required=True, help="runs.csv from gather.py")
    parser.add_argument("--out-dir", required=True, help="folder for the figures")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        epochs_df = pd.read_csv(args.epochs)
        runs_df = pd.read_csv(args.runs)
        plot_all(epochs_df, runs_df, args.out_dir)
    except (OSError, ValueError) as err:
        # A missing or unreadable table, or tables that do not fit together.
        where = f"{args.epochs}, {args.runs}: " if "table" in str(err) else ""
        print(f"plot.py: error: {where}{err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
