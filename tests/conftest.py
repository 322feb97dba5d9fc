"""Fixtures shared by the tests: script paths and imports, a small synthetic dataset."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "workflow" / "scripts"


def import_script(name: str):
    """Import workflow/scripts/<name>.py as module ``name`` (once per session)."""
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    path = SCRIPTS_DIR / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results, no .snakemake) to run in."""
    dest.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(
            REPO_ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def workflow_env(**extra: str) -> dict:
    """The environment with this interpreter's bin first: the rules call `python`."""
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def metric_columns(epochs_csv: Path) -> list[tuple[str, ...]]:
    """The columns that must be identical between runs (times excluded)."""
    with epochs_csv.open() as handle:
        return [tuple(row[m] for m in METRICS) for row in csv.DictReader(handle)]


@pytest.fixture(scope="session")
def scripts_dir() -> Path:
    return SCRIPTS_DIR


@pytest.fixture(scope="session")
def load_script():
    """``load_script("train")`` imports workflow/scripts/train.py."""
    return import_script


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A folder with the four FashionMNIST-format files: 2000 train, 500 test, seed 0."""
    fashion_mnist = import_script("fashion_mnist")
    folder = tmp_path_factory.mktemp("synthetic_fashion_mnist")
    fashion_mnist.write_synthetic(folder, train_size=2000, test_size=500, seed=0)
    return folder
