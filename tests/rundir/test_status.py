"""status.py and fmnist/report/status.py against fake run folders in every state (finished,
training, mid-epoch checkpoint, stopped, failed, requeued, waiting, missing), with stand-ins
for squeue and sacct; the pieces it reads (fmnist/rundir/progress.py,
fmnist/cluster/queue.py). The real SLURM's pending and running jobs: tests/slurm/test_status.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fmnist.cluster import queue
from fmnist.cluster.requeue import FAILURE_COUNT_FILE
from fmnist.report import status
from fmnist.rundir import progress, runfiles
from helpers import BASE_PARAMS, REPO_ROOT, RUN_HEADER, SCRIPTS_DIR, wait_for_exec, write_run

STATUS = SCRIPTS_DIR / "status.py"
NOW = 1_800_000_000.0  # the moment the status is taken, in these tests
PARAMS = {**BASE_PARAMS, "epochs": 5}
LOG = status.LOGS_DIR


def rows(n: int, seconds: float = 10.0) -> list[tuple]:
    return [(e, 0.5, 0.45, round(0.80 + e / 100, 4), seconds, 200.0) for e in range(1, n + 1)]


def run_folder(workdir: Path, run: str, epochs_done: int = 0, seconds: float = 10.0) -> Path:
    """A run folder as training leaves it before run.json: epochs.csv so far and the lock."""
    folder = workdir / status.RUNS_DIR / run
    folder.mkdir(parents=True)
    lines = [RUN_HEADER, *(",".join(map(str, r)) for r in rows(epochs_done, seconds))]
    (folder / runfiles.EPOCHS_FILE).write_text("\n".join(lines) + "\n")
    (folder / runfiles.LOCK_FILE).write_text("process 4194303 on nowhere.example\n")
    return folder


def finished(workdir: Path, run: str) -> Path:
    return write_run(workdir / status.RUNS_DIR, run, rows(5), epochs=5)


def checkpoint(folder: Path, position: progress.Position, json_too: bool = True) -> None:
    """checkpoint.pt (its bytes do not matter here) and, after it, checkpoint.json."""
    (folder / runfiles.CHECKPOINT_FILE).write_bytes(b"not read")
    if json_too:
        progress.write_position(folder, position)


def write_log(workdir: Path, run: str, *lines: str, age: float = 1000.0, now=NOW) -> Path:
    """The run's training log, last written ``age`` seconds before ``now``."""
    path = workdir / LOG / f"{run}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    os.utime(path, (now - age, now - age))
    return path


def by_run(found: status.Status) -> dict[str, status.RunStatus]:
    return {r.run: r for r in found.runs}


MID_EPOCH = progress.Position(2, 5, 150, 600, 3.0, ("received SIGTERM",), "2026-12-03T10:00:00")


# --------------------------------------------------------------------------- run folders


def test_every_state_from_the_run_folders_alone(tmp_path):
    finished(tmp_path, "done")
    stopped = run_folder(tmp_path, "stopped", epochs_done=2)
    checkpoint(stopped, MID_EPOCH)
    write_log(tmp_path, "stopped", "stopping early: received SIGTERM. Checkpoint saved at ...")
    run_folder(tmp_path, "failed", epochs_done=1)
    write_log(tmp_path, "failed", "Epoch [1/5], Loss: 0.5", "error: out of memory (...)")
    run_folder(tmp_path, "crashed")
    write_log(tmp_path, "crashed", "Traceback (most recent call last):", "OSError: [Errno 5] I/O")
    interrupted = run_folder(tmp_path, "interrupted", epochs_done=3)
    checkpoint(interrupted, progress.Position(3, 5, 0, 600))
    write_log(tmp_path, "interrupted", "Epoch [3/5], Loss: 0.5")
    write_log(tmp_path, "starting", age=5)  # the rule's log exists; train.py is importing
    # Snakemake deleted epochs.csv (an output) when its job stopped: checkpoint.json tells.
    cleaned = tmp_path / status.RUNS_DIR / "cleaned"
    cleaned.mkdir()
    checkpoint(cleaned, progress.Position(2, 5, 300, 600, 4.0, (), "", 0.75, 10.0))
    write_log(tmp_path, "cleaned", "stopping early: received SIGINT. Checkpoint saved at ...")

    names = ["done", "stopped", "failed", "crashed", "interrupted", "starting", "cleaned"]
    runs = dict.fromkeys([*names, "missing"], PARAMS)
    found = status.collect(runs, tmp_path, slurm=False, now=NOW)
    got = by_run(found)

    assert [r.state for r in found.runs] == [
        "finished", "stopped", "failed", "failed", "stopped", "training", "stopped",
        "not started",
    ]  # fmt: skip
    assert (got["done"].epoch, got["done"].accuracy, got["done"].epoch_seconds) == (5, 0.85, 10)
    # The mid-epoch checkpoint's position, from checkpoint.json (checkpoint.pt is torch's).
    assert got["stopped"].epoch == 3
    assert "received SIGTERM; checkpoint at epoch 3, 150/600 batches done" in got["stopped"].details
    assert got["stopped"].left == pytest.approx(0.75 * 10 + 2 * 10)
    assert got["failed"].epoch is None
    assert got["failed"].details.startswith("error: out of memory (...); read ")
    assert got["failed"].log == str(LOG / "failed.log")
    assert got["crashed"].details.startswith("OSError: [Errno 5] I/O; read results/logs/")
    assert got["interrupted"].epoch == 4
    assert "interrupted" in got["interrupted"].details
    assert "checkpoint at epoch 3 of 5 done" in got["interrupted"].details
    assert got["starting"].details == "starting"
    cleaned = got["cleaned"]
    assert (cleaned.epoch, cleaned.accuracy, cleaned.epoch_seconds) == (3, 0.75, 10.0)
    assert cleaned.left == pytest.approx(0.5 * 10 + 2 * 10)
    assert found.total_line() == (
        "total: 8 runs: 1 finished, 1 training, 3 stopped, 2 failed, 1 not started"
    )


def test_a_run_that_trains_here_is_found_by_its_lock(tmp_path):
    """The lock file names the process; it trains while that process runs train.py on the
    run's folder (the folder name in its command line, read from /proc)."""
    folder = run_folder(tmp_path, "r", epochs_done=2)
    command = [
        sys.executable, "-c", "import time; time.sleep(60)", "workflow/scripts/train.py",
        "--out-dir", f"results/runs/{folder.name}",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    try:
        wait_for_exec(process, *command)  # a real holder writes its lock once it runs
        holder = f"process {process.pid} on {socket.gethostname()}"
        (folder / runfiles.LOCK_FILE).write_text(holder + "\n")
        # Resumed in the middle of epoch 3, before its first progress line.
        checkpoint(folder, MID_EPOCH)
        write_log(tmp_path, "r", "resuming from ...: epoch 3, batch 151", age=2.0)
        (resumed,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
        line = progress.progress_line(3, 5, 300, 600, 123.4, 5.0)
        write_log(tmp_path, "r", "Epoch [2/5], Loss: 0.5", line, age=2.0)
        (training,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
        assert (
            progress.holder_is_training(holder, tmp_path / "other", socket.gethostname()) is False
        )
    finally:
        process.kill()
        process.wait()
    assert (resumed.state, resumed.epoch) == ("training", 3)
    assert resumed.details == "resumed with 150/600 batches done"
    assert resumed.left == pytest.approx(0.75 * 10 + 2 * 10)
    assert training.state == "training"
    assert (training.epoch, training.accuracy, training.epoch_seconds) == (3, 0.82, 10.0)
    assert training.details == "batch 300/600, 123 samples/s"
    # What the epoch had left when the line was written, less the 2 s since; two more epochs.
    assert training.left == pytest.approx(3.0 + 2 * 10.0)
    (ended,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
    assert ended.state == "stopped"


def test_a_run_locked_on_another_host_trains_while_its_log_is_fresh(tmp_path):
    run_folder(tmp_path, "r", epochs_done=1)
    write_log(tmp_path, "r", "Epoch [1/5], Loss: 0.5", age=30)
    (fresh,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
    assert (fresh.state, fresh.epoch) == ("training", 2)
    assert "on nowhere.example (its log is 30 s old)" in fresh.details
    write_log(tmp_path, "r", "Epoch [1/5], Loss: 0.5", age=status.FRESH_LOG_SECONDS + 1)
    (stale,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
    assert stale.state == "stopped"


def test_a_position_older_than_its_checkpoint_is_not_trusted(tmp_path):
    """checkpoint.json is written after checkpoint.pt: one older than it belongs to another
    checkpoint (a kill in between, a checkpoint set aside)."""
    folder = run_folder(tmp_path, "r", epochs_done=2)
    checkpoint(folder, MID_EPOCH)
    assert progress.read_position(folder) == MID_EPOCH
    later = os.stat(folder / progress.POSITION_FILE).st_mtime_ns + 10**9
    os.utime(folder / runfiles.CHECKPOINT_FILE, ns=(later, later))
    assert progress.read_position(folder) is None
    write_log(tmp_path, "r", "stopping early: received SIGTERM. Checkpoint saved at ...")
    (stopped,) = status.collect({"r": PARAMS}, tmp_path, slurm=False, now=NOW).runs
    assert stopped.epoch == 3 and "position not recorded" in stopped.details
    (folder / runfiles.CHECKPOINT_FILE).unlink()
    assert progress.read_position(folder) is None  # checkpoint.json alone is no checkpoint


def test_the_position_and_the_progress_line_read_back():
    assert progress.parse_progress(progress.progress_line(3, 10, 412, 600, 1234.4, 3725.2)) == (
        progress.Progress(3, 10, 412, 600, 1234.0, 3725)
    )
    assert progress.parse_progress("Epoch [3/10], Loss: 0.5") is None
    assert progress.clock(59.6) == "0:01:00" and progress.clock(None) == "-"


def test_the_progress_line_is_not_an_epoch_line_of_the_tutorial_log(tmp_path):
    """gather.py reads training logs as tutorial logs too: a progress line is not malformed."""
    from fmnist.rundir.tutorial_log import parse_tutorial_log

    path = tmp_path / "r.log"
    path.write_text(f"{progress.progress_line(1, 1, 1, 2, 10.0, 1.0)}\nEpoch [1/1], Loss: 0.5\n")
    assert parse_tutorial_log(path).columns["epoch"] == [1]


# --------------------------------------------------------------------------- SLURM


def fake_slurm(tmp_path: Path, monkeypatch, squeue: list[str], sacct: list[str]) -> Path:
    """squeue and sacct on PATH that print these lines and note each call in calls.txt."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, lines in (("squeue", squeue), ("sacct", sacct)):
        (bin_dir / f"{name}.out").write_text("".join(f"{line}\n" for line in lines))
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\ncat {bin_dir}/{name}.out\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def slurm_log(workdir: Path, run: str, job: int) -> None:
    folder = workdir / queue.SLURM_LOGS / run
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job}.log").write_text("")


def comment(run: str) -> str:
    return f"{queue.COMMENT_PREFIX}{run}"


def test_slurm_states_from_one_squeue_and_one_sacct_call(tmp_path, monkeypatch):
    workdir = tmp_path / "wf"
    # Running: its progress line; its earlier job (which failed) is no longer the latest.
    run_folder(workdir, "running", epochs_done=1)
    slurm_log(workdir, "running", 11)
    slurm_log(workdir, "running", 21)
    write_log(workdir, "running", progress.progress_line(2, 5, 60, 600, 500.0, 54.0), age=4)
    # Pending, never started: only squeue's comment names its run.
    # Requeued twice: stopped by the time limit once, failed once; waits to start again.
    requeued = run_folder(workdir, "requeued", epochs_done=2)
    checkpoint(requeued, MID_EPOCH)
    (requeued / FAILURE_COUNT_FILE).write_text("1\n")
    write_log(workdir, "requeued", "requeued SLURM job 23 (failed with OSError); it goes on ...")
    slurm_log(workdir, "requeued", 23)
    # Failed: its job ended (sacct), its error in the log.
    run_folder(workdir, "failed")
    write_log(workdir, "failed", "error: train.devices requests ['cuda:0'] (...)")
    slurm_log(workdir, "failed", 24)
    run_folder(workdir, "cancelled", epochs_done=1)
    slurm_log(workdir, "cancelled", 25)
    finished(workdir, "done")
    slurm_log(workdir, "done", 26)
    # Cancelled while it waited: only Snakemake's log names its job.
    snakemake_log = workdir / queue.SNAKEMAKE_LOGS / "2026-12-03T101010.000000.snakemake.log"
    snakemake_log.parent.mkdir(parents=True)
    snakemake_log.write_text(
        "Job 3 has been submitted with SLURM jobid 27 (log: "
        f"{workdir / queue.SLURM_LOGS}/never/27.log).\n"
    )
    calls = fake_slurm(
        tmp_path,
        monkeypatch,
        squeue=[
            f"21|RUNNING|None|0|node7|{comment('running')}|",
            f"22|PENDING|Resources|0|(null)|{comment('waiting')}|",
            f"23|PENDING|BeginTime|2|(null)|{comment('requeued')}|",
            "99|RUNNING|None|0|node7|someone else's job|",
        ],
        sacct=["24|FAILED|2:0", "25|REQUEUED|0:0", "25|CANCELLED by 0|0:15", "27|CANCELLED|0:0"],
    )
    names = ["running", "waiting", "requeued", "failed", "cancelled", "never", "done"]
    runs = dict.fromkeys(names, PARAMS)
    found = status.collect(runs, workdir, failure_retries=2, now=NOW)
    got = by_run(found)

    assert [r.state for r in found.runs] == [
        "training", "waiting", "requeued", "failed", "failed", "failed", "finished",
    ]  # fmt: skip
    said = calls.read_text().splitlines()
    assert [c.split()[0] for c in said] == ["squeue", "sacct"]
    assert said[1].endswith("-j 24,25,27")  # only the ended jobs of unfinished runs
    assert got["running"].job == "21 RUNNING"
    assert got["running"].details == "batch 60/600, 500 samples/s; on node7"
    assert got["running"].left == pytest.approx(50 + 3 * 10)
    assert (got["waiting"].job, got["waiting"].details) == ("22 PENDING", "pending (Resources)")
    assert got["requeued"].job == "23 PENDING"
    assert got["requeued"].epoch == 3
    assert got["requeued"].details == (
        "pending (BeginTime); checkpoint at epoch 3, 150/600 batches done; requeued 2× (received "
        "SIGTERM, 1 failure of 2 allowed, last: failed with OSError)"
    )
    assert got["failed"].job == "24 FAILED"
    assert got["failed"].details == (
        "exit 2; error: train.devices requests ['cuda:0'] (...); read "
        "results/logs/train_model_parallel/failed.log (and "
        ".snakemake/slurm_logs/rule_train_model_parallel/failed/24.log)"
    )
    assert got["cancelled"].job == "25 CANCELLED"
    assert got["cancelled"].details == (
        "killed by signal 15; read "
        ".snakemake/slurm_logs/rule_train_model_parallel/cancelled/25.log; requeued 1×"
    )
    assert (got["never"].job, got["never"].details) == ("27 CANCELLED", "it never started")
    assert got["done"].job == ""  # a finished run's jobs are not asked about


def test_without_slurm_the_runs_are_still_shown(tmp_path, monkeypatch):
    """squeue failing (no cluster configured here) is said only where SLURM ran jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("squeue", "sacct"):
        (bin_dir / name).write_text(
            "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact' >&2\nexit 1\n"
        )
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    workdir = tmp_path / "wf"
    finished(workdir, "done")
    local = status.collect({"done": PARAMS, "new": PARAMS}, workdir, now=NOW)
    assert [r.state for r in local.runs] == ["finished", "not started"] and local.notes == []
    run_folder(workdir, "r")
    slurm_log(workdir, "r", 31)
    found = status.collect({"r": PARAMS}, workdir, now=NOW)
    assert found.runs[0].job == "31"
    assert any("squeue failed (exit 1): slurm_load_jobs error" in n for n in found.notes)
    assert any("the state of 1 ended SLURM job(s) is unknown" in n for n in found.notes)


def test_squeue_and_sacct_lines_are_read_as_slurm_prints_them():
    jobs, runs = queue.parse_squeue(
        f"7|PENDING|Priority|1|(null)|{comment('a')}|\n8|RUNNING|None|0|n1|(null)|\n"
    )
    assert runs == {"a": ["7"]}
    assert (jobs["7"].reason, jobs["7"].restarts, jobs["7"].queued) == ("Priority", 1, True)
    assert (jobs["8"].reason, jobs["8"].nodes) == ("", "n1")
    ended = queue.parse_sacct(
        "9|PREEMPTED|0:0\n9|NODE_FAIL|1:0\n9|FAILED|1:0\n9.batch|FAILED|1:0\n"
    )
    assert (ended["9"].state, ended["9"].restarts) == ("FAILED", 2)
    assert ended["9"].earlier_states == ["PREEMPTED", "NODE_FAIL"]
    assert ended["9"].ended_badly
    assert queue.sacct_command(["3", "12"])[-2:] == ["-j", "3,12"]


# --------------------------------------------------------------------------- status.py


def workflow_folder(tmp_path: Path, sweep: dict) -> Path:
    """A workflow folder: config/config.yaml and overlay.yaml sweeping ``sweep``."""
    workdir = tmp_path / "wf"
    (workdir / "config").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "config/config.yaml", workdir / "config/config.yaml")
    overlay = {"train": {"epochs": 5}, "sweep": sweep}
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    return workdir


def status_py(workdir: Path, *args: str, **options) -> subprocess.CompletedProcess:
    command = [sys.executable, str(STATUS), "--configfile", "overlay.yaml", "--no-slurm", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, **options)


def test_status_py_prints_a_line_per_run_of_the_config_and_a_total(tmp_path):
    workdir = workflow_folder(tmp_path, {"seed": [0, 1, 2]})
    finished(workdir, "seed=0")
    run_folder(workdir, "seed=1", epochs_done=2)
    write_log(workdir, "seed=1", "error: the data are bad", now=time.time())
    run_folder(workdir, "leftover")
    done = status_py(workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "run", "state", "epoch", "test", "acc", "per", "epoch", "left", "SLURM", "job", "details"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["seed=0", "finished", "5/5", "85.00%", "10.0"]
    assert lines[2].split()[:2] == ["seed=1", "failed"] and "error: the data are bad" in lines[2]
    assert lines[3].split() == ["seed=2", "not", "started", "-", "-", "-", "-", "-"]
    assert lines[4] == "total: 3 runs: 1 finished, 1 failed, 1 not started"
    assert "1 folder(s) in results/runs are not runs of this configuration (leftover)" in lines[5]
    column = lines[0].index("state")
    assert lines[1][column:].startswith("finished") and lines[3][column:].startswith("not")
    as_json = json.loads(status_py(workdir, "--json").stdout)
    assert as_json["total"] == {"runs": 3, "finished": 1, "failed": 1, "not started": 1}
    assert as_json["runs"][1]["log"] == "results/logs/train_model_parallel/seed=1.log"


def test_the_config_is_read_like_snakemake_reads_it(tmp_path):
    workdir = workflow_folder(tmp_path, {"seed": [0, 1]})
    # Merged key by key over the overlay's sweep; YAML values are text, as for Snakemake.
    done = status_py(workdir, "--config", "sweep={activation: [relu, log_softmax]}", "--json")
    assert done.returncode == 0, done.stderr
    assert {r["run"] for r in json.loads(done.stdout)["runs"]} == {
        f"activation={a}_seed={s}" for a in ("relu", "logsoftmax") for s in (0, 1)
    }
    assert status.parse_config_args(["aa=1", "bb=0.5", "cc=True", "dd=x", "ee="]) == {
        "aa": 1, "bb": 0.5, "cc": True, "dd": "x", "ee": None,
    }  # fmt: skip
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        status.parse_config_args(["x"])
    bad = status_py(workdir, "--config", "train={epochs: 0}")
    assert bad.returncode == 2 and bad.stderr.startswith("status.py: error: ")
    missing = status_py(workdir, "--configfile", "nowhere.yaml")
    assert missing.returncode == 2 and "nowhere.yaml" in missing.stderr


def test_status_py_never_imports_torch(tmp_path):
    workdir = workflow_folder(tmp_path, {"seed": [0]})
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['status.py', '--configfile', 'overlay.yaml']\n"
        "try:\n"
        f"    runpy.run_path({str(STATUS)!r}, run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    assert not end.code, end.code\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"


def test_watch_shows_it_again_until_interrupted(tmp_path):
    """Ctrl-C ends it, even where it inherits SIGINT ignored (as from a shell's background
    job, where CI found it running on)."""
    workdir = workflow_folder(tmp_path, {"seed": [0]})
    command = [sys.executable, str(STATUS), "--configfile", "overlay.yaml", "--watch", "0.2"]
    out = tmp_path / "watch.out"
    with out.open("w") as handle:
        ignored = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
        watch = subprocess.Popen(command, cwd=workdir, stdout=handle, text=True, preexec_fn=ignored)
        deadline = time.monotonic() + 60
        while out.read_text().count("total: 1 run") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        watch.send_signal(signal.SIGINT)
        try:
            watch.wait(timeout=30)
        finally:
            watch.kill()  # no stray process if SIGINT did not end it
    shown = out.read_text()
    assert watch.returncode == 0
    assert shown.count("total: 1 run: 1 not started") >= 3
    assert "(status.py, every 0.2 s; Ctrl-C ends)" in shown


def test_help_and_bad_options():
    done = subprocess.run([sys.executable, str(STATUS), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--watch SECONDS" in done.stdout
    bad = subprocess.run(
        [sys.executable, str(STATUS), "--watch", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--watch must be positive" in bad.stderr


def test_the_benchmark_times_status_py_on_fake_runs(tmp_path):
    out = tmp_path / "figures.json"
    command = [
        sys.executable, str(SCRIPTS_DIR / "benchmark_status.py"), "--runs", "20",
        "--repetitions", "1", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "total: 20 runs: 10 finished, 2 training, 2 waiting, 2 stopped, 2 failed, 2 not started"
    )
    figures = json.loads(out.read_text())
    assert figures["runs"] == 20 and figures["with squeue and sacct"]["best"] > 0
