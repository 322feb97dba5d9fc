"""Running the workflow through the SLURM profile in tests, and reading back what SLURM
did: shared by the one-node and the multi-node cluster's tests (each test's fixture says
which cluster SLURM_CONF names)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import helpers
import yaml
from helpers import REPO_ROOT as REPO
from helpers import SLURM_FLAGS, merge, slurm_env

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")


def write_overlay(path: Path, **sections) -> Path:
    base = {
        "data": {
            "dir": "resources/synthetic",
            "synthetic": {"train_size": 2000, "test_size": 500, "seed": 0},
        },
        "train": {"epochs": 2},
        "resources": {"train_model_parallel": {"cpus_per_task": 1, "mem_mb": 1500, "runtime": 10}},
    }
    path.write_text(yaml.safe_dump(merge(base, sections)))
    return path


def run_snakemake(workdir: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return helpers.run_snakemake(workdir, *SLURM_FLAGS, *args, limit=timeout, env=slurm_env())


def sacct_rows(job_id: str, fields: str, *flags: str) -> list[list[str]]:
    """sacct's allocation records of a job (with -D, a requeued job's earlier ones too)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", *flags, "-j", job_id, "-o", fields],
        env=slurm_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def sacct(job_id: str, fields: str) -> list[str]:
    """The job's latest record; empty fields while accounting does not know the job yet."""
    rows = sacct_rows(job_id, fields)
    return rows[-1] if rows else [""] * len(fields.split(","))


def sacct_history(job_id: str) -> list[str]:
    """The job's state in each of its runs."""
    return [state for (state,) in sacct_rows(job_id, "State", "-D")]


def start_reference(data_dir: Path, out_dir: Path, train: dict, *more: str) -> subprocess.Popen:
    """The same run without interruption, straight from the training script."""
    command = [
        sys.executable,
        str(REPO / "workflow/scripts/train.py"),
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--devices",
        *train["devices"],
        "--epochs",
        str(train["epochs"]),
        "--hidden-sizes",
        *map(str, train["hidden_sizes"]),
        "--threads",
        "1",
        *more,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    """snakemake in the background, its output going to workdir/snakemake.out."""
    return subprocess.Popen(
        helpers.snakemake_command(*SLURM_FLAGS, *args),
        cwd=workdir,
        env=slurm_env(),
        stdout=(workdir / "snakemake.out").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished_output(workflow: subprocess.Popen, workdir: Path, timeout: float) -> str:
    workflow.wait(timeout=timeout)
    return (workdir / "snakemake.out").read_text()


def wait_for(condition, what: str, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def training_job(workdir: Path) -> str | None:
    """The SLURM job id of the workflow's training job, once sbatch has accepted it."""
    found = SUBMITTED.findall((workdir / "snakemake.out").read_text())
    return found[0] if found else None
