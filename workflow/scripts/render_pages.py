#!/usr/bin/env python3
"""Render the report's pages from the tables gather.py wrote (the command line of
fmnist.report.pages).

Reads epochs.csv, runs.csv, summary.csv, provenance.csv and compute.csv from --tables and
writes into --out: summary.html, runs.html, compute.html, provenance.html (sortable tables,
readable inside the Snakemake report), overview.rst (the report's landing paragraph) and
run_pages/{run}.html (one page per run). Must not import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmnist.report.pages import write_pages


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=Path, required=True, help="the folder gather.py wrote")
    parser.add_argument("--out", type=Path, required=True, help="the pages' folder")
    parser.add_argument(
        "--synthetic-data",
        action="store_true",
        help="the runs trained on generated data (data.synthetic): the pages say SYNTHETIC",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        write_pages(args.tables, args.out, args.synthetic_data)
    except (OSError, KeyError, ValueError) as err:
        print(f"render_pages.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
