"""A finished run set as a Workflow Run RO-Crate (the command line of fmnist.report.rocrate).

Reads the run folders given (results/runs/{run}/: epochs.csv, run.json, model.pt,
timeline.csv), the tables and figures under --results, the verification when
results/verify/reproduction.csv exists, and the workflow's files in --repo; writes the crate
as a folder (--out) and as a zip of it (--zip). The crate follows the Provenance Run Crate
profile 0.5 on RO-Crate 1.1. Run from the folder that holds --results, as Snakemake does.

Must not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmnist.report.rocrate import CrateError, write_crate
from fmnist.rundir.files import WriteError
from fmnist.rundir.runfiles import RunFileError, read_run_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_rocrate.py",
        description="Write a Provenance Run Crate (RO-Crate 1.1) of finished runs: the "
        "workflow, the configuration, one action per job with its inputs and results, the "
        "compute, the verification, the software versions, hosts and SLURM jobs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders")
    parser.add_argument("--results", default="results", help="the results folder (relative)")
    parser.add_argument("--repo", default=".", help="the workflow's repository (its root)")
    parser.add_argument(
        "--config-json", required=True, help="the configuration the runs were made with (JSON)"
    )
    parser.add_argument("--snakemake-version", help="the Snakemake that ran the workflow")
    parser.add_argument(
        "--snakemake-dir",
        help="Snakemake's .snakemake folder, for when each job started and ended "
        "(else only its end, from its outputs' times)",
    )
    parser.add_argument("--out", required=True, help="the crate's folder")
    parser.add_argument("--zip", required=True, help="the crate as a zip file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = [read_run_dir(folder) for folder in args.run_dirs]
        crate = write_crate(
            runs,
            Path(args.results),
            Path(args.repo),
            json.loads(args.config_json),
            Path(args.out),
            Path(args.zip),
            snakemake_version=args.snakemake_version,
            snakemake_dir=Path(args.snakemake_dir) if args.snakemake_dir else None,
        )
    except (OSError, CrateError, RunFileError, WriteError, ValueError) as err:
        print(f"make_rocrate.py: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(crate.data_entities)} files, {len(runs)} run(s); {args.zip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
