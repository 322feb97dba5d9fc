"""The cluster profile against a real single-node SLURM (tests/slurm/start_cluster.sh).

Every workflow run goes through `snakemake --profile profiles/slurm`, sbatch and srun;
what SLURM allocated is read back from sacct.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import helpers
import pytest
import yaml
from fmnist.data.synthetic import write_synthetic
from helpers import REPO_ROOT as REPO
from helpers import (
    SLURM_FLAGS,
    copy_workflow,
    merge,
    metric_columns,
    slurm_env,
)

pytestmark = pytest.mark.slurm
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
REQUEUE_SETTLE_S = 5.0  # seconds a requeued job waits before fast_requeue releases it


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


@pytest.fixture
def fast_requeue(slurm_cluster):
    """Start requeued jobs early, as an admin can, instead of after SLURM's ~2 minutes of
    BeginTime: the behaviour under test is the same, the suite just waits less. A job is
    released a few seconds after its requeue, not at once: slurmd must first have cleaned
    up its previous allocation, or the new one fails with "Job credential revoked"."""
    stop = threading.Event()
    waiting_since: dict[str, float] = {}

    def release():
        while not stop.wait(1.0):
            pending = subprocess.run(
                ["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True
            ).stdout.split("\n")
            for job, _, reason in (line.partition(" ") for line in pending if line):
                if reason != "BeginTime":  # not (or no longer) held back after a requeue
                    waiting_since.pop(job, None)
                    continue
                since = waiting_since.setdefault(job, time.monotonic())
                if time.monotonic() - since >= REQUEUE_SETTLE_S:
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
                    del waiting_since[job]

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def job_ids(run_json: Path) -> list[str]:
    record = json.loads(run_json.read_text())
    return [a["slurm"]["job_id"] for a in record["attempts"]]


def test_sweep_runs_are_concurrent_jobs(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    # One GPU each, so the node (2 GPUs, 2 cores) can run both at once.
    overlay = write_overlay(
        workdir / "overlay.yaml",
        sweep={"seed": [0, 1]},
        resources={"train_model_parallel": {"gpu": 1}},
        train={"epochs": 3},
    )
    result = run_snakemake(workdir, "--configfile", str(overlay))
    assert result.returncode == 0, result.stdout + result.stderr

    spans = []
    for seed in (0, 1):
        (job,) = job_ids(workdir / f"results/runs/seed={seed}/run.json")
        state, start, end = sacct(job, "State,Start,End")
        assert state == "COMPLETED"
        spans.append((start, end))
    # Both were running at the same time (ISO timestamps compare as strings).
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, spans
    runs = list(csv.DictReader((workdir / "results/tables/runs.csv").open()))
    assert sorted(r["run_id"] for r in runs) == ["seed=0", "seed=1"]


def assert_compute_matches_sacct(workdir: Path, job: str, allocations: int) -> None:
    """Every allocation of the requeued job is accounted for, as sacct -D reports it."""
    records = sacct_rows(job, "ElapsedRaw,AllocTRES,State", "-D")
    assert len(records) == allocations
    rows = list(csv.DictReader((workdir / "results/tables/compute.csv").open()))
    assert [int(float(r["wall_seconds"])) for r in rows] == [int(e) for e, _, _ in records]
    assert [r["slurm_state"] for r in rows] == [state for _, _, state in records]
    assert all("gres/gpu=2" in tres for _, tres, _ in records)
    for row, (elapsed, _, _) in zip(rows, records):
        assert float(row["alloc_gpus"]) == 2
        assert float(row["gpu_hours"]) == pytest.approx(2 * int(elapsed) / 3600)
        assert row["energy_joules"] == ""  # the test cluster measures no energy
    (run,) = csv.DictReader((workdir / "results/tables/runs.csv").open())
    assert float(run["gpu_hours"]) == pytest.approx(sum(float(r["gpu_hours"]) for r in rows))
    assert run["compute_source"] == "sacct"
    assert run["attempt_ends"].split(",")[-1] == "finished"
    statement = (workdir / "results/tables/compute.md").read_text()
    assert f"as SLURM jobs ({job})" in statement


def test_a_run_and_its_verification_are_two_gpu_jobs_with_correct_outputs(slurm_cluster, tmp_path):
    """Training asks for the config's two GPUs (the script sees them); download, gather and
    plot are local rules; `snakemake verify` retrains the run through the same rule and
    resources: another SLURM job, its rerun reproduced."""
    workdir = copy_workflow(tmp_path / "wf")
    overlay = write_overlay(workdir / "overlay.yaml", train={"devices": ["cpu", "cpu"]})
    result = run_snakemake(workdir, "--configfile", str(overlay))
    assert result.returncode == 0, result.stdout + result.stderr

    run_dir = workdir / "results/runs/base"
    (attempt,) = json.loads((run_dir / "run.json").read_text())["attempts"]
    original = attempt["slurm"]["job_id"]
    state, tres = sacct(original, "State,AllocTRES")
    assert state == "COMPLETED"
    assert "gres/gpu=2" in tres
    assert attempt["slurm"]["partition"] == "debug"
    assert attempt["slurm"]["node"] == "localhost"
    # The script saw the two GPUs SLURM gave the job.
    assert attempt["cuda_visible_devices"] == "0,1"
    rows = list(csv.DictReader((run_dir / "epochs.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (workdir / "results/tables/summary.csv").exists()
    assert (workdir / "results/figures/loss.pdf").exists()
    # Download, gather and plot are local rules: only training went through sbatch.
    assert result.stderr.count("has been submitted with SLURM jobid") == 1

    verify = run_snakemake(workdir, "verify", "--configfile", str(overlay))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (rerun_job,) = SUBMITTED.findall(verify.stderr)
    assert rerun_job != original
    state, tres = sacct(rerun_job, "State,AllocTRES")
    assert state == "COMPLETED" and "gres/gpu=2" in tres
    (row,) = csv.DictReader((workdir / "results/verify/reproduction.csv").open())
    assert row["verdict"] == "reproduced", row


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


def test_failing_job_is_reported_with_its_log(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    # The test cluster's GPUs are stand-ins: asking for CUDA devices fails inside the job.
    overlay = write_overlay(workdir / "overlay.yaml", train={"devices": ["cuda:0", "cuda:1"]})
    result = run_snakemake(workdir, "--configfile", str(overlay))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # A failure running again cannot fix: submitted once, never requeued, reported with its log.
    assert result.stderr.count("has been submitted with SLURM jobid") == 1
    (job,) = SUBMITTED.findall(result.stderr)
    assert sacct_history(job) == ["FAILED"]
    assert "Error in rule train_model_parallel" in output
    assert "results/logs/train_model_parallel/base.log" in output
    assert "SLURM status is: 'FAILED'" in output
    log = (workdir / "results/logs/train_model_parallel/base.log").read_text()
    assert "train.devices requests ['cuda:0', 'cuda:1']" in log
    assert not (workdir / "results/runs/base/run.json").exists()


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


LONG_RUN = {"train": {"epochs": 200, "batch_size": 10, "devices": ["cpu", "cpu"]}}


@pytest.mark.parametrize("when", ["running", "pending"])
def test_scancel_ends_the_workflow_naming_the_job_and_its_log(slurm_cluster, tmp_path, when):
    """The executor plugin (2.8.0) reads sacct's "CANCELLED by <uid>" as still running and
    waits forever; the workflow's workaround (fmnist/cluster/slurm_plugin.py) ends the wait."""
    workdir = copy_workflow(tmp_path / "wf")
    overlay = write_overlay(workdir / "overlay.yaml", **LONG_RUN)
    blocker = None
    if when == "pending":  # both GPUs taken: the training job waits in the queue
        blocker = subprocess.run(
            ["sbatch", "--parsable", "-p", "debug", "-A", "root", "--gpus=2", "-t", "5",
             "-o", "/dev/null", "--wrap", "sleep 300"],
            capture_output=True, text=True, env=slurm_env(), check=True,
        ).stdout.strip()  # fmt: skip
    try:
        workflow = start_snakemake(workdir, "--configfile", str(overlay))
        job = wait_for(lambda: training_job(workdir), "the training job's submission")
        state = "RUNNING" if when == "running" else "PENDING"
        wait_for(lambda: sacct(job, "State")[0] == state, f"job {job} to be {state}")
        cancelled = time.monotonic()
        subprocess.run(["scancel", job], env=slurm_env(), check=True)
        output = finished_output(workflow, workdir, timeout=120)
        seconds = time.monotonic() - cancelled
    finally:
        if blocker:
            subprocess.run(["scancel", blocker], env=slurm_env())
    assert workflow.returncode not in (0, 124, 137), output
    assert seconds < 60, f"{seconds:.0f} s after scancel"
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output
    assert "results/logs/train_model_parallel/base.log" in output
    assert not (workdir / "results/runs/base/run.json").exists()


def test_preemption_by_requeue_mid_epoch_ends_with_the_uninterrupted_metrics(
    slurm_cluster, fast_requeue, tmp_path
):
    """scontrol requeue of the running job (what preemption with PreemptMode=REQUEUE does):
    the script checkpoints on SIGTERM, SLURM starts the job again, and it resumes."""
    workdir = copy_workflow(tmp_path / "wf")
    synthetic = {"train_size": 20000, "test_size": 500, "seed": 0}
    train = {"epochs": 6, "batch_size": 50, "hidden_sizes": [200], "devices": ["cpu", "cpu"]}
    data = {"dir": "resources/synthetic", "synthetic": synthetic}
    overlay = write_overlay(workdir / "overlay.yaml", data=data, train=train)
    write_synthetic(tmp_path / "reference_data", **synthetic)
    reference = start_reference(
        tmp_path / "reference_data", tmp_path / "reference", train, "--batch-size", "50"
    )
    workflow = start_snakemake(workdir, "--configfile", str(overlay))
    epochs_csv = workdir / "results/runs/base/epochs.csv"
    job = wait_for(lambda: training_job(workdir), "the training job's submission")
    wait_for(lambda: epochs_csv.exists() and epochs_csv.read_text().count("\n") >= 2, "epoch 1")
    subprocess.run(["scontrol", "requeue", job], env=slurm_env(), check=True)
    output = finished_output(workflow, workdir, timeout=600)
    reference_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_out
    assert workflow.returncode == 0, output
    attempts = json.loads((workdir / "results/runs/base/run.json").read_text())["attempts"]
    assert [a["stopped"] for a in attempts[:-1]] == ["received SIGTERM"]
    assert {a["slurm"]["job_id"] for a in attempts} == {job}
    assert sacct_history(job) == ["REQUEUED", "COMPLETED"]
    assert metric_columns(epochs_csv) == metric_columns(tmp_path / "reference/epochs.csv")


def test_a_sweep_as_a_job_array(slurm_cluster, tmp_path):
    """--slurm-array-jobs=train_model_parallel submits the sweep's ready runs as one array."""
    workdir = copy_workflow(tmp_path / "wf")
    overlay = write_overlay(
        workdir / "overlay.yaml",
        sweep={"seed": [0, 1, 2], "lr": [0.01, 0.003]},
        resources={"train_model_parallel": {"gpu": 0}},
    )
    arrays = "--slurm-array-jobs=train_model_parallel"
    result = run_snakemake(workdir, "--configfile", str(overlay), arrays, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    slurm = [
        json.loads(run_json.read_text())["attempts"][-1]["slurm"]
        for run_json in sorted(workdir.glob("results/runs/*/run.json"))
    ]
    assert len(slurm) == 6
    (array,) = {s["array_job_id"] for s in slurm}
    assert sorted(int(s["array_task_id"]) for s in slurm) == [1, 2, 3, 4, 5, 6]
    for s in slurm:
        assert sacct(f"{array}_{s['array_task_id']}", "State") == ["COMPLETED"]
    runs = list(csv.DictReader((workdir / "results/tables/runs.csv").open()))
    assert len(runs) == 6


def test_stage_tasks_get_one_gpu_each_inside_a_job_that_asked_per_gpu(slurm_cluster, tmp_path):
    """Our training jobs ask sbatch for --ntasks-per-gpu=1, which the job's environment
    carries as SLURM_NTASKS_PER_GPU; srun refuses its --gpus-per-task beside that. The
    launcher's step (fmnist.engine.launch's command and environment) must still start one task
    per stage, each bound to its own GPU (its own CUDA_VISIBLE_DEVICES)."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import os, subprocess, sys
            sys.path.insert(0, {str(REPO / "workflow/scripts")!r})
            from fmnist.engine.launch import srun_command, srun_environment
            assert os.environ["SLURM_NTASKS_PER_GPU"] == "1"
            task = ["bash", "-c", "echo task=$SLURM_PROCID gpus=$CUDA_VISIBLE_DEVICES"]
            command = srun_command(2, threads=1, gpus=True, tasks_per_node=None) + task
            done = subprocess.run(command, env=srun_environment(os.environ, 29500))
            sys.exit(done.returncode)
            """
        )
    )
    out = tmp_path / "job.out"
    submit = [
        "sbatch", "--parsable", "--wait", "-p", "debug", "-A", "root", "-t", "2",
        "--gpus=2", "--ntasks-per-gpu=1", "--ntasks=2", "--cpus-per-task=1",
        "-o", str(out), "--wrap", f"{sys.executable} {script}",
    ]  # fmt: skip
    done = subprocess.run(submit, env=slurm_env(), capture_output=True, text=True, timeout=120)
    output = out.read_text() if out.exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + output
    tasks = sorted(line for line in output.splitlines() if line.startswith("task="))
    assert [t.split()[0] for t in tasks] == ["task=0", "task=1"], output
    gpus = [t.split("gpus=")[1] for t in tasks]
    assert len(set(gpus)) == 2 and all(len(g.split(",")) == 1 for g in gpus), output


# Last in the file, so that under `make test` the other worker has mostly finished: the run's
# windows then get the CPUs they are sized for.
def test_time_limit_checkpoints_and_resumes_to_identical_metrics(
    slurm_cluster, fast_requeue, tmp_path
):
    """runtime: 2 leaves 30 s of work per window: the run needs several windows of one job.
    Both engines share the training loop, its stop and its checkpoint (a single-process stop
    at the deadline and its resume: engine/test_train.py, the preemption test below); here
    the distributed engine's two stage processes stop together in each window, requeue the
    job, resume, and end with the single-process reference's numbers, bit for bit. The run
    is one job of one task per stage: each allocation's srun step runs both."""
    workdir = copy_workflow(tmp_path / "wf")
    # About 4 s an epoch on one core here: 16 epochs need three or more 30-s job windows,
    # and still two on a core twice as fast.
    synthetic = {"train_size": 20000, "test_size": 500, "seed": 0}
    data = {"dir": "resources/synthetic", "synthetic": synthetic}
    train = {
        "epochs": 16,
        "hidden_sizes": [2048],
        "devices": ["cpu", "cpu"],
        "engine": "distributed",
        "microbatches": 2,
    }
    overlay = write_overlay(
        workdir / "overlay.yaml",
        data=data,
        train=train,
        resources={"train_model_parallel": {"runtime": 2, "signal_seconds": 90}},
    )
    # The uninterrupted reference, computed meanwhile on the other core from the same
    # (deterministically generated) data.
    reference_dir = tmp_path / "reference"
    sums = write_synthetic(tmp_path / "reference_data", **synthetic)
    reference = start_reference(
        tmp_path / "reference_data", reference_dir, train, "--microbatches", "2"
    )
    result = run_snakemake(workdir, "--configfile", str(overlay), timeout=900)
    reference_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_out
    assert result.returncode == 0, result.stdout + result.stderr

    run_dir = workdir / "results/runs/base"
    record = json.loads((run_dir / "run.json").read_text())
    attempts = record["attempts"]
    # More windows than the profile's retries (0) allow: time-limit stops spend none.
    assert len(attempts) >= 3, attempts
    assert all(a["stopped"] == "the SLURM time limit is near" for a in attempts[:-1]), attempts
    # One job, requeued by itself before each limit: the same id throughout, no TIMEOUT.
    (job,) = {a["slurm"]["job_id"] for a in attempts}
    assert result.stderr.count("has been submitted with SLURM jobid") == 1
    states = sacct_history(job)
    assert states == ["REQUEUED"] * (len(attempts) - 1) + ["COMPLETED"], states
    log = (workdir / "results/logs/train_model_parallel/base.log").read_text()
    # Each attempt rewrites the log; the last one resumed from the previous one's checkpoint.
    assert "resuming from results/runs/base/checkpoint.pt" in log
    assert not (run_dir / "checkpoint.pt").exists()
    epochs = [r["epoch"] for r in csv.DictReader((run_dir / "epochs.csv").open())]
    assert epochs == [str(e) for e in range(1, 17)]

    assert record["setup"]["data_md5"] == sums
    expected = metric_columns(reference_dir / "epochs.csv")
    assert metric_columns(run_dir / "epochs.csv") == expected
    assert_compute_matches_sacct(workdir, job, len(attempts))
    assert all([r["slurm_task_id"] for r in a["ranks"]] == ["0", "1"] for a in attempts)
    assert all([r["rank"] for r in a["ranks"]] == [0, 1] for a in attempts)
    assert record["setup"]["world_size"] == 2
    assert "srun --ntasks=2 --cpus-per-task=1" in log
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks,AllocCPUS,State"],
        env=slurm_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert f"{job}.0|2|2|COMPLETED" in steps, steps
