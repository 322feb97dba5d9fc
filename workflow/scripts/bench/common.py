"""What both benchmarks share: their summary of repeated timings, the data they time on,
and the command-line type of a count."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fmnist.data import synthetic


def summarize(values: list[float]) -> dict:
    return {"all": values, "best": max(values), "median": statistics.median(values)}


def prepare_data(args, tmp: Path) -> tuple[Path, dict]:
    """The data folder to time on (given, or generated synthetic) and how it was made."""
    if args.data_dir is not None:
        return args.data_dir, {"synthetic": False, "data_dir": str(args.data_dir)}
    data_dir = tmp / "data"
    synthetic.write_synthetic(data_dir, args.train_size, args.test_size, args.data_seed)
    made = {"train_size": args.train_size, "test_size": args.test_size, "seed": args.data_seed}
    return data_dir, {"synthetic": True, **made}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
