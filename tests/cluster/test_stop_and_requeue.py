"""fmnist/cluster/ (stop.py, slurm.py, requeue.py): stopping at signals and at the SLURM
deadline, and a job requeueing itself (with stand-ins for squeue and scontrol; the real ones in
tests/slurm/test_slurm_workflow.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fmnist.cluster import requeue, slurm, stop


def test_stop_requests_signals(monkeypatch, capsys, torch_state):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGURG):
        watch = stop.StopRequests(90.0)
        assert signal.getsignal(sig) == watch._on_signal  # else raise_signal ends pytest
        assert not watch.should_stop()
        signal.raise_signal(sig)
        assert watch.should_stop()
        assert watch.reason == f"received {sig.name}"
    assert capsys.readouterr().out == ""


def test_stop_requests_slurm_deadline(monkeypatch, capsys, torch_state):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    end = [time.time() + 1000]
    monkeypatch.setattr(stop, "slurm_end_time", lambda: end[0])
    watch = stop.StopRequests(90.0)
    assert watch.deadline == end[0] - 90
    assert "will stop 90 s before it" in capsys.readouterr().out
    # Under SLURM, SIGURG (the warning signal) only makes it read the end time again.
    signal.raise_signal(signal.SIGURG)
    assert not watch.should_stop()
    end[0] = time.time() + 60  # the limit was shortened: now inside the margin
    signal.raise_signal(signal.SIGURG)
    assert watch.should_stop()
    assert watch.reason == "the SLURM time limit is near"
    # A start inside the margin keeps half the time left for work.
    end[0] = time.time() + 60
    watch = stop.StopRequests(90.0)
    assert end[0] - 60 < watch.deadline <= end[0] - 29
    assert not watch.should_stop()
    assert "below the 90 s margin: using half" in capsys.readouterr().out


def test_stop_requests_notices_an_extended_limit(monkeypatch, torch_state):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    end = [time.time() + 100]
    monkeypatch.setattr(stop, "slurm_end_time", lambda: end[0])
    watch = stop.StopRequests(99.9)
    end[0] = time.time() + 1000  # an admin extended the limit; no signal says so
    time.sleep(0.2)  # past the first deadline
    assert not watch.should_stop()
    assert watch.deadline == pytest.approx(end[0] - 99.9)


def test_stop_requests_puts_the_previous_handlers_back(monkeypatch, torch_state):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)

    def mine(signum, frame):
        pass

    for sig in stop.STOP_SIGNALS:
        signal.signal(sig, mine)
    with stop.StopRequests(90.0) as watch:
        assert all(signal.getsignal(s) == watch._on_signal for s in stop.STOP_SIGNALS)
    assert all(signal.getsignal(s) is mine for s in stop.STOP_SIGNALS)


def test_slurm_job_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.slurm_job() is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    monkeypatch.setenv("SLURMD_NODENAME", "node7")
    monkeypatch.delenv("SLURM_JOB_ACCOUNT", raising=False)
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.setenv("SLURM_GPUS", "2")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "hpc1")
    assert slurm.slurm_job() == {
        "job_id": "42",
        "cluster": "hpc1",
        "partition": "gpu",
        "node": "node7",
        "account": None,
        "gpus": "2",
        "array_job_id": None,
        "array_task_id": None,
    }


def fake_slurm(tmp_path, monkeypatch, state: str, requeue_status: int = 0):
    """squeue and scontrol stand-ins on PATH that log their arguments."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho squeue "$@" >> {calls}\necho {state}\n')
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho scontrol "$@" >> {calls}\n'
        f'[ "$1" = requeue ] && exit {requeue_status}\nexit 0\n'
    )
    for tool in ("squeue", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    return calls


def test_a_running_job_requeues_itself(tmp_path, monkeypatch):
    calls = fake_slurm(tmp_path, monkeypatch, "RUNNING")
    assert requeue.requeue_self("stopped before its time limit")
    assert calls.read_text().splitlines() == ["squeue -h -j 42 -o %T", "scontrol requeue 42"]


def test_a_job_slurm_is_ending_is_not_requeued(tmp_path, monkeypatch, capsys):
    calls = fake_slurm(tmp_path, monkeypatch, "CANCELLED")  # scancel: the user's word holds
    assert not requeue.requeue_self("received SIGTERM")
    assert calls.read_text().splitlines() == ["squeue -h -j 42 -o %T"]
    assert "not requeueing SLURM job 42: it is CANCELLED" in capsys.readouterr().out


def test_a_job_that_refuses_requeue_is_made_requeueable_once(tmp_path, monkeypatch, capsys):
    calls = fake_slurm(tmp_path, monkeypatch, "RUNNING", requeue_status=1)
    assert not requeue.requeue_self("stopped before its time limit")
    assert calls.read_text().splitlines()[1:] == [
        "scontrol requeue 42",
        "scontrol update JobId=42 Requeue=1",
        "scontrol requeue 42",
    ]
    assert "could not requeue SLURM job 42" in capsys.readouterr().out


def test_outside_slurm_nothing_is_requeued(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not requeue.requeue_self("anything")


def test_the_failure_budget_of_a_run(tmp_path):
    run = tmp_path / "run"
    assert [requeue.take_failure_requeue(run, 2) for _ in range(3)] == [True, True, False]
    assert (run / requeue.FAILURE_COUNT_FILE).read_text() == "2\n"
    assert not requeue.take_failure_requeue(tmp_path / "other", 0)


def test_a_failure_outside_slurm_is_neither_requeued_nor_counted(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not requeue.requeue_after_failure(tmp_path, 2, "failed with OSError")
    assert not (tmp_path / requeue.FAILURE_COUNT_FILE).exists()


def test_a_failure_under_slurm_is_counted_and_requeued(tmp_path, monkeypatch):
    calls = fake_slurm(tmp_path, monkeypatch, "RUNNING")
    run = tmp_path / "run"
    assert requeue.requeue_after_failure(run, 1, "failed with OSError")
    assert "scontrol requeue 42" in calls.read_text()
    assert not requeue.requeue_after_failure(run, 1, "failed with OSError")  # budget spent
    assert calls.read_text().count("scontrol requeue 42") == 1
