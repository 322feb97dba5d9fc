"""The provenance record of a run (run.json; its format is workflow/schemas/run.schema.yaml).

What holds for the whole run is written once at the top; what can change between the
attempts of a resumed run (host, software, scheduler, device names) is in each attempt.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from fmnist.cluster.slurm import slurm_job
from fmnist.engine.devices import device_name

REPO_ROOT = Path(__file__).resolve().parents[4]
RECORD_FORMAT = 2


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_state() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30
        )

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only
        "torchvision": package_version("torchvision"),
        "snakemake": package_version("snakemake"),
        "numpy": package_version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def attempt_record(started: str, start_epoch: int, devices: list[torch.device]) -> dict:
    """This process's entry in run.json's attempts ("finished"/"stopped" added at its end)."""
    return {
        "started": started,
        "start_epoch": start_epoch,
        "hostname": socket.gethostname(),
        "device_names": [device_name(d) for d in devices],
        "cpu_name": device_name(torch.device("cpu")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm": slurm_job(),
        "versions": versions(),
    }


def determinism() -> dict:
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
