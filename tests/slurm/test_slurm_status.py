"""status.py against the real test SLURM: a sweep's training job running and the other one
pending behind it, as the workflow submits them (the plugin's comment, its log folders,
Snakemake's log); then the pending one cancelled, the running one requeued (squeue's
restart count, checkpoint.json's stop) and cancelled (sacct)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import SCRIPTS_DIR, copy_workflow, slurm_env
from jobs import start_snakemake, wait_for, write_overlay

pytestmark = pytest.mark.slurm

STATUS = SCRIPTS_DIR / "status.py"
# Long enough to be seen training: 200 batches an epoch, 200 epochs (it is cancelled).
LONG_RUN = {"epochs": 200, "batch_size": 10, "devices": ["cpu", "cpu"]}


def status_py(workdir, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(STATUS), "--configfile", "overlay.yaml", *args],
        cwd=workdir,
        env=slurm_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def runs_of(workdir) -> dict[str, dict]:
    return {r["run"]: r for r in json.loads(status_py(workdir, "--json"))["runs"]}


def squeue(job: str, field: str) -> str:
    done = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", field], env=slurm_env(), capture_output=True, text=True
    )
    return done.stdout.strip()


def test_status_shows_running_pending_requeued_and_cancelled_jobs(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    # Each job asks for the node's two GPUs (resources' gpu: 2): one trains, the other waits.
    write_overlay(workdir / "overlay.yaml", sweep={"seed": [0, 1]}, train=LONG_RUN)
    workflow = start_snakemake(workdir, "--configfile", "overlay.yaml")
    jobs = []
    try:

        def one_training_one_waiting():
            states = {r["state"]: r for r in runs_of(workdir).values()}
            if sorted(states) == ["training", "waiting"] and states["training"]["epoch"] >= 2:
                return states
            return None

        found = wait_for(one_training_one_waiting, "a run training in epoch 2, one waiting", 300)
        training, waiting = found["training"], found["waiting"]
        jobs = [training["job"].split()[0], waiting["job"].split()[0]]
        table = status_py(workdir)
        states = {
            "training": (squeue(jobs[0], "%T"), squeue(jobs[0], "%k")),
            "waiting": (squeue(jobs[1], "%T"), squeue(jobs[1], "%k")),
        }
        # The waiting one cancelled before it started; the training one requeued (as
        # preemption does): it checkpoints on SIGTERM and waits again (BeginTime).
        subprocess.run(["scancel", jobs[1]], env=slurm_env(), check=True)
        subprocess.run(["scontrol", "requeue", jobs[0]], env=slurm_env(), check=True)

        def requeued_and_failed():
            runs = runs_of(workdir)
            ran, never = runs[training["run"]], runs[waiting["run"]]
            ok = (ran["state"], never["state"]) == ("requeued", "failed")
            return (ran, never) if ok and "received SIGTERM" in ran["details"] else None

        requeued, never = wait_for(requeued_and_failed, "a requeued and a failed run", 120)
        subprocess.run(["scancel", jobs[0]], env=slurm_env(), check=True)

        # Cancelled while it waited to go on: failed, from sacct, naming its logs.
        def failed():
            run = runs_of(workdir)[training["run"]]
            return run if run["state"] == "failed" else None

        ended = wait_for(failed, "the requeued run failed", 120)
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], env=slurm_env())
        workflow.terminate()  # Snakemake's own wait for a requeued job is not tested here
        try:
            workflow.wait(timeout=60)
        except subprocess.TimeoutExpired:
            workflow.kill()
            workflow.wait()

    # What squeue said of each job, just after status.py: its state and run.
    comment = "rule_train_model_parallel_wildcards_"
    assert states["training"] == ("RUNNING", comment + training["run"])
    assert states["waiting"] == ("PENDING", comment + waiting["run"])
    assert training["job"] == f"{jobs[0]} RUNNING"
    assert training["accuracy"] is not None and training["epoch_seconds"] > 0
    assert training["left"] > 0 and "on localhost" in training["details"]
    assert waiting["job"] == f"{jobs[1]} PENDING"
    assert waiting["details"].startswith("pending (")  # (Resources) or (Priority)
    assert table.splitlines()[-1] == "total: 2 runs: 1 training, 1 waiting", table
    assert f"{jobs[0]} RUNNING" in table and f"{jobs[1]} PENDING" in table

    assert (never["job"], never["details"]) == (f"{jobs[1]} CANCELLED", "it never started")
    assert requeued["job"] == f"{jobs[0]} PENDING"
    assert requeued["epoch"] >= 2 and "checkpoint at epoch" in requeued["details"]
    assert requeued["details"].endswith("; requeued 1× (received SIGTERM)")
    assert ended["job"] == f"{jobs[0]} CANCELLED"
    assert f"read results/logs/train_model_parallel/{training['run']}.log" in ended["details"]
    assert (
        f".snakemake/slurm_logs/rule_train_model_parallel/{training['run']}/" in (ended["details"])
    )
    assert ended["details"].endswith("requeued 1× (received SIGTERM)")
