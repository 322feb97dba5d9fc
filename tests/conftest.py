"""Fixtures shared by the tests: script paths and imports, a small synthetic dataset."""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "workflow" / "scripts"
# The workflow's package (workflow/scripts/fmnist), importable as `fmnist` in every test.
sys.path.insert(0, str(SCRIPTS_DIR))
from fmnist import idx, synthetic  # noqa: E402


def import_script(name: str):
    """Import workflow/scripts/<name>.py as module ``name`` (once per session)."""
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
# The training settings' defaults, written out: the tutorial's numbers (run.json's params).
DEFAULT_SETTINGS = {
    "devices": "auto",
    "epochs": 10,
    "batch_size": 100,
    "lr": 0.01,
    "hidden_sizes": [200],
    "activation": "log_softmax",
    "stage_split": "flops",
    "seed": 0,
    "tutorial_double_scaling": False,
    "microbatches": 1,
    "engine": "single_process",
    "schedule": "gpipe",
    "adam_impl": "for_loop",
    "cpu_step": "kernels",
}


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results, no .snakemake) to run in."""
    dest.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(
            REPO_ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def snakemake_command(*args: str, limit: int = 600) -> list[str]:
    """snakemake bounded by `timeout -k`: a hung status poll must not hang the suite."""
    return ["timeout", "-k", "10", str(limit), "snakemake", *args]


def run_snakemake(
    workdir: Path, *args: str, limit: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """snakemake in ``workdir`` (a copy of the workflow), its output captured."""
    return subprocess.run(
        snakemake_command(*args, limit=limit),
        cwd=workdir,
        env=workflow_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=limit + 30,
    )


def workflow_env(**extra: str) -> dict:
    """The environment with this interpreter's bin first: the rules call `python`."""
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def metric_columns(epochs_csv: Path) -> list[tuple[str, ...]]:
    """The columns that must be identical between runs (times excluded)."""
    with epochs_csv.open() as handle:
        return [tuple(row[m] for m in METRICS) for row in csv.DictReader(handle)]


@functools.cache
def _split(data_dir: Path, split: str):
    return idx.load_split(data_dir, split)


def train_batch(data_dir: Path, index, double_scaling: bool = False):
    """Images (B, 1, 28, 28) scaled like ToTensor, and int64 labels, of the train split."""
    import torch

    images, labels = _split(data_dir, "train")
    x = torch.from_numpy(images[index].astype("float32")).div(255.0).unsqueeze(1)
    if double_scaling:
        x = x.div(255.0)
    return x, torch.from_numpy(labels[index].astype("int64"))


@pytest.fixture
def torch_state():
    """Put back what training changes process-wide: RNG, threads, flags, signal handlers."""
    import signal

    import torch

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGURG)}
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=[]):
        yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


# --------------------------------------------------------------------------- fake run folders

RUN_HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"


def make_record(run_id: str, params: dict, *, setup=None, attempts=None, **top) -> dict:
    """A valid format-2 run.json (workflow/schemas/run.schema.yaml) for ``params``.

    ``setup`` entries replace those of a CPU setup; each dict in ``attempts`` replaces
    entries of a finished CPU attempt (one by default); ``top`` replaces top-level keys.
    """
    base_attempt = {
        "started": "2026-11-27T20:00:00+00:00",
        "finished": "2026-11-27T20:05:00+00:00",
        "start_epoch": 1,
        "hostname": "node1",
        "device_names": ["cpu", "cpu"],
        "cuda_visible_devices": None,
        "slurm": None,
        "versions": {
            **dict.fromkeys(["torchvision", "snakemake", "numpy", "cuda", "cudnn"]),
            "python": "3.11.7",
            "torch": "2.14.1",
        },
    }
    determinism = {
        "deterministic_algorithms": True,
        "cudnn_benchmark": False,
        "cublas_workspace_config": None,
    }
    record = {
        "format": 2,
        "run_id": run_id,
        "params": params,
        "swept": [],
        "setup": {
            "devices": ["cpu", "cpu"],
            "train_step": "TrainStep",
            "threads": 1,
            "deadline_margin_seconds": 90.0,
            "data_dir": "resources/synthetic",
            "data_md5": {},
            "determinism": determinism,
            **(setup or {}),
        },
        "git": {"commit": "abc123", "dirty": False},
        "attempts": [{**base_attempt, **a} for a in (attempts or [{}])],
    }
    return {**record, **top}


def write_run_folder(root, run_id: str, rows, params: dict, header=RUN_HEADER, **record):
    """A run folder as training writes it: epochs.csv (``header``, then ``rows`` of cells)
    and run.json, ``make_record(run_id, params, **record)``, checked against its schema."""
    import json

    from fmnist import runfiles

    folder = Path(root) / run_id
    folder.mkdir(parents=True)
    lines = [header, *(",".join(map(str, row)) for row in rows)]
    (folder / runfiles.EPOCHS_FILE).write_text("\n".join(lines) + "\n")
    content = make_record(run_id, params, **record)
    runfiles.check_record(content, folder / runfiles.RECORD_FILE)
    (folder / runfiles.RECORD_FILE).write_text(json.dumps(content, indent=2) + "\n")
    return folder


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A folder with the four FashionMNIST-format files: 2000 train, 500 test, seed 0."""
    folder = tmp_path_factory.mktemp("synthetic_fashion_mnist")
    synthetic.write_synthetic(folder, train_size=2000, test_size=500, seed=0)
    return folder
