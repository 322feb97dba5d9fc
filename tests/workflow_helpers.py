"""Helpers shared by the tests that run the workflow as a user would."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

from fashion_mnist import write_synthetic  # noqa: E402

__all__ = ["REPO", "SCRIPTS", "copy_workflow", "metric_columns", "workflow_env", "write_synthetic"]

METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results, no .snakemake) to run in."""
    dest.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def workflow_env(**extra: str) -> dict:
    """The environment with this interpreter's bin first, as the README's commands set it."""
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def metric_columns(epochs_csv: Path) -> list[tuple[str, ...]]:
    """The columns that must be identical between runs (times excluded)."""
    with epochs_csv.open() as handle:
        return [tuple(row[m] for m in METRICS) for row in csv.DictReader(handle)]
