"""Compare runs with their reruns from scratch, and say whether they reproduced
(the command line of fmnist.verify.compare; `snakemake verify` runs it).

    verify.py compare --pair ORIGINAL RERUN [--pair ...] --out-dir DIR [--accept-unverifiable]
        compares each original run folder with its rerun, byte for byte (every metric of
        epochs.csv, times excluded, and every tensor of model.pt) and their run.json, and
        writes DIR/reproduction.csv, DIR/reproduction.html and DIR/verdict.rst (the
        report's sentence). Exit 0 whatever the verdicts: the table is the result; exit 1
        naming the file (and whether it is the original's or the rerun's) that cannot be
        read.
    verify.py check DIR/reproduction.csv
        prints each run's verdict; exit 1 if any run was not reproduced, was not
        comparable, was incomplete or was unverifiable here (unless compare accepted it),
        naming it.

`compare` imports torch, only to read model.pt; `check` does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from fmnist.rundir.files import atomic_write_text
from fmnist.rundir.runfiles import RunFileError
from fmnist.verify import compare as verify


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="verify.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="compare runs with their reruns")
    compare.add_argument(
        "--pair",
        nargs=2,
        action="append",
        required=True,
        metavar=("ORIGINAL", "RERUN"),
        help="an original run folder and the folder of its rerun (repeatable)",
    )
    compare.add_argument("--out-dir", required=True, type=Path, metavar="DIR")
    compare.add_argument(
        "--accept-unverifiable",
        action="store_true",
        help="let a run that is unverifiable here pass, said so (verify.accept_unverifiable)",
    )
    check = commands.add_parser("check", help="exit 1 unless every run reproduced")
    check.add_argument("table", type=Path, help="reproduction.csv written by compare")
    return parser.parse_args(argv)


def compare(pairs, out_dir: Path, accept_unverifiable: bool = False) -> int:
    try:
        table = verify.reproduction_table(pairs, accept_unverifiable)
    except RunFileError as err:
        print(f"verify.py: error: {err}", file=sys.stderr)
        return 1
    texts = {
        "reproduction.csv": table.to_csv(index=False),
        "reproduction.html": verify.reproduction_page(table),
        "verdict.rst": verify.verdict_rst(table) + "\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
    for row in table.itertuples():
        print(f"{row.run}: {row.verdict}")
    print(verify.summary_sentence(table))
    return 0


def check(path: Path) -> int:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        print(f"verify.py: error: {path}: {err}", file=sys.stderr)
        return 1
    for row in table.itertuples():
        differences = f" ({row.provenance_differences})" if row.provenance_differences else ""
        print(f"{row.run}: {row.verdict}{differences}")
    print(verify.summary_sentence(table))
    failed = verify.failures(table)
    if len(failed):
        print(
            f"verify: {len(failed)} run(s) not confirmed: {', '.join(failed['run'])} "
            f"(details: {path}, and the report's Reproduction section)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "compare":
        return compare(args.pair, args.out_dir, args.accept_unverifiable)
    return check(args.table)


if __name__ == "__main__":
    sys.exit(main())
