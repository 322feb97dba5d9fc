"""The status benchmark's material: a workflow folder of many fake runs in every state, and,
optionally, stand-ins for squeue and sacct that answer for them as a cluster would."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fmnist.cluster import queue
from fmnist.cluster.requeue import FAILURE_COUNT_FILE
from fmnist.report.status import LOGS_DIR, RUNS_DIR
from fmnist.rundir import progress, runfiles

SCRIPTS = Path(__file__).resolve().parents[1]
STATUS = SCRIPTS / "status.py"
REPO = SCRIPTS.parents[1]
EPOCHS, BATCHES = 10, 600
HEADER = ",".join(runfiles.EPOCH_COLUMNS)
# Of every ten runs: what state each is in (finished runs dominate a real sweep's status).
MIX = ["finished"] * 5 + ["training", "stopped", "failed", "queued", "not started"]


def epoch_rows(n: int) -> str:
    rows = [f"{e},0.5,0.45,{0.8 + e / 100:.4f},12.5,4800.0" for e in range(1, n + 1)]
    return "\n".join([HEADER, *rows]) + "\n"


def write_run(workdir: Path, run: str, state: str, job: int | None) -> None:
    """A run folder and log as training leaves them in ``state``, and the plugin's log of
    its SLURM ``job`` (None: none)."""
    folder, log = workdir / RUNS_DIR / run, workdir / LOGS_DIR / f"{run}.log"
    if state == "not started":
        return
    folder.mkdir(parents=True)
    lines = [f"Epoch [{e}/{EPOCHS}], Loss: 0.5000" for e in range(1, 5)]
    if state == "finished":
        (folder / runfiles.EPOCHS_FILE).write_text(epoch_rows(EPOCHS))
        (folder / runfiles.RECORD_FILE).write_text(json.dumps({"run_id": run}) + "\n")
        (folder / runfiles.MODEL_FILE).write_bytes(b"\0" * 1024)
        log.write_text("\n".join(lines) + "\nTraining finished.\n")
        return
    (folder / runfiles.EPOCHS_FILE).write_text(epoch_rows(4))
    (folder / runfiles.CHECKPOINT_FILE).write_bytes(b"\0" * 1024)
    position = progress.Position(4, EPOCHS, 200, BATCHES, 4.0, ("the SLURM time limit is near",))
    progress.write_position(folder, position)
    (folder / runfiles.LOCK_FILE).write_text(f"process 1 on {socket.gethostname()}\n")
    lines.append(progress.progress_line(5, EPOCHS, 400, BATCHES, 4800.0, 2.5))
    if state == "stopped":
        lines.append("stopping early: received SIGTERM. Checkpoint saved at epoch 5, batch 201")
    elif state == "failed":
        lines += ["Traceback (most recent call last):", "OSError: [Errno 5] Input/output error"]
    elif state == "queued":
        (folder / FAILURE_COUNT_FILE).write_text("1\n")
    log.write_text("\n".join(lines) + "\n")
    if job is not None:  # the plugin's log of the job, which names it
        (workdir / queue.SLURM_LOGS / run).mkdir(parents=True)
        (workdir / queue.SLURM_LOGS / run / f"{job}.log").write_text("")


def fake_slurm(bin_dir: Path, queued: dict[str, tuple[int, str]], ended: list[int]) -> None:
    """squeue and sacct that print, for any arguments, what the real ones would for the
    ``queued`` runs' jobs ({run: (job id, RUNNING or PENDING)}) and the ``ended`` jobs."""
    bin_dir.mkdir(parents=True)
    squeue = [
        f"{job}|{state}|{'None' if state == 'RUNNING' else 'BeginTime'}|{job % 2}|node1|"
        f"{queue.COMMENT_PREFIX}{run}|"
        for run, (job, state) in queued.items()
    ]
    sacct = [f"{job}|FAILED|1:0" for job in ended]
    for name, lines in (("squeue", squeue), ("sacct", sacct)):
        (bin_dir / f"{name}.out").write_text("\n".join(lines) + "\n")
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\ncat "{bin_dir / name}.out"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)


def make_workflow(root: Path, runs: int, slurm: bool) -> tuple[Path, Path, dict]:
    """A workflow folder of ``runs`` fake runs (config/, an overlay sweeping seeds, results/)
    and, with ``slurm``, a bin folder of stand-ins for squeue and sacct; what it holds."""
    workdir = root / "workflow"
    (workdir / "config").mkdir(parents=True)
    shutil.copy2(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    overlay = {"train": {"epochs": EPOCHS}, "sweep": {"seed": list(range(runs))}}
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    (workdir / LOGS_DIR).mkdir(parents=True)
    states, queued, ended = {}, {}, []
    for number in range(runs):
        run, state = f"seed={number}", MIX[number % len(MIX)]
        job = 1000 + number if slurm and state in ("training", "queued", "failed") else None
        if job is not None and state != "failed":
            queued[run] = (job, "RUNNING" if state == "training" else "PENDING")
        elif job is not None:
            ended.append(job)
        write_run(workdir, run, state, job)
        states[state] = states.get(state, 0) + 1
    if slurm:
        fake_slurm(root / "bin", queued, ended)
    return workdir, (root / "bin" if slurm else None), states


def time_status(workdir: Path, bin_dir: Path | None, slurm: bool, extra=()) -> tuple[float, str]:
    """Seconds status.py takes, as a user runs it (a new interpreter), and what it printed."""
    env = dict(os.environ)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    command = [sys.executable, str(STATUS), "--configfile", "overlay.yaml", *extra]
    if not slurm:
        command.append("--no-slurm")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"status.py failed: {done.stderr}")
    return seconds, done.stdout


def time_imports() -> float:
    """Seconds a new interpreter takes to import what status.py imports, and nothing else."""
    code = "import fmnist.report.status, fmnist.config.sweep, snakemake.utils"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, check=True)
    return time.perf_counter() - started
