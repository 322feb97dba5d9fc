#!/usr/bin/env python3
"""Show where every run of the configuration stands, one line each, and a total.

A run is finished; training (the epoch it is in, the last test accuracy, the mean time per
epoch, the estimated training time left); waiting in the SLURM queue (its job, state and
reason); requeued (how many times, why); stopped with a checkpoint (where; run the workflow
again to resume); failed (the exit status and the log to read); or not started.

It reads the run folders (results/runs/), the training logs (results/logs/), the
checkpoints' positions (checkpoint.json) and, where SLURM is there, asks squeue and sacct
once each. Give the --configfile and --config the workflow was run with. Reads only;
imports no torch, so it stays quick on a thousand runs. Exit 0, or 2 for a configuration
that cannot be read.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from fmnist.config.settings import SettingError
from fmnist.config.sweep import configured_runs
from fmnist.report import status

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
BASE_CONFIG = Path("config", "config.yaml")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="status.py",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python workflow/scripts/status.py --configfile my.yaml --watch 30",
    )
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        type=Path,
        metavar="FILE",
        help="config files merged over config/config.yaml, as given to snakemake",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config entries set last, as given to snakemake",
    )
    parser.add_argument(
        "--directory",
        "-d",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the workflow's folder, holding config/, results/ and .snakemake/ (default: .)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="show it again every SECONDS until interrupted (Ctrl-C)",
    )
    parser.add_argument(
        "--no-slurm", action="store_true", help="ask neither squeue nor sacct (run folders only)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error(f"--watch must be positive, got {args.watch}")
    return args


def read_runs(args) -> tuple[dict[str, dict], dict]:
    """The configuration's runs and the configuration (SystemExit 2 if it cannot be read)."""
    base = args.directory / BASE_CONFIG
    if not base.is_file():
        base = REPO / BASE_CONFIG
    try:
        config = status.load_config(base, args.configfile, args.config, SCHEMA)
        return configured_runs(config), config
    except SettingError as err:
        message = f"invalid config: {err}"
    except Exception as err:  # WorkflowError (the schema), YAML and file errors
        message = str(err).strip() or type(err).__name__
    print(f"status.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def show(runs: dict, config: dict, args) -> str:
    retries = config["resources"]["train_model_parallel"]["failure_retries"]
    found = status.collect(runs, args.directory, not args.no_slurm, retries)
    return found.as_json() if args.json else found.text()


def main(argv=None) -> int:
    args = parse_args(argv)
    runs, config = read_runs(args)
    if args.watch is None:
        sys.stdout.write(show(runs, config, args))
        return 0
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    # Ctrl-C ends it even when started from a process that ignores SIGINT (Python then
    # leaves it ignored, e.g. under a test runner's worker); SIGTERM ends it the same way.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        while True:
            shown = show(runs, config, args)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            every = f"every {args.watch:g} s"
            sys.stdout.write(f"{clear}{stamp} (status.py, {every}; Ctrl-C ends)\n{shown}\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
