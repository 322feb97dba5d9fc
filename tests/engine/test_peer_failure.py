"""A stage's process that stops answering (SIGSTOP: stopped, overloaded, its node cut off) or
ends (SIGKILL: its process or node gone): the others fail, naming it by rank and host
(fmnist.engine.peers), after the process-group timeout or at once; the launcher exits 1 (a
transient failure, requeued under SLURM) with no process left, and the checkpoint from
before the fault resumes the run to the bits of an uninterrupted one.

The diagnosis itself is tested on a store held in this process; the runs are real (torchrun,
gloo), as in test_distributed.py.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from fmnist.engine import peers
from fmnist.engine.peers import PeerFailure, PeerWatch
from helpers import (
    TIMEOUT,
    Run,
    assert_same_tensors,
    cli,
    data_rows,
    load_weights,
    metric_lines,
    stage_pids,
)

# Long enough to be stopped in the middle of an epoch: 200 steps of 10 rows each.
LONG = {"batch_size": 10, "epochs": 4, "microbatches": 2}
HOSTS = [{"hostname": "node-a"}, {"hostname": "node-b"}]
TIMED_OUT = "[gloo/unbound_buffer.cc:78] Timed out waiting 10000ms for recv operation to complete"
CLOSED = "[gloo/pair.cc:561] Connection closed by peer [10.0.0.2]:4242. This is typically ..."


# ------------------------------------------------------------------ the diagnosis


class FakeStore:
    """The rendezvous store's counters in this process; ``hang`` makes every call block
    (its host stopped), ``gone`` makes every call fail (its process ended)."""

    def __init__(self):
        self.counts, self.hang, self.gone = {}, threading.Event(), False
        self.release = threading.Event()

    def clone(self):
        return self

    def add(self, key: str, value: int) -> int:
        if self.hang.is_set():
            self.release.wait()
        if self.gone:
            raise RuntimeError("Broken pipe")
        self.counts[key] = self.counts.get(key, 0) + value
        return self.counts[key]


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setattr(peers, "BEAT_SECONDS", 0.05)
    monkeypatch.setattr(peers, "READ_SECONDS", 0.5)
    held = FakeStore()
    yield held
    held.release.set()  # no beat left blocked


def watch(store: FakeStore, rank: int) -> PeerWatch:
    watched = PeerWatch(store, rank, HOSTS, 10, "the store (on host node-a)")
    watched.quiet_seconds = 0.3  # six beats
    return watched


def test_a_peer_that_stopped_beating_is_named_with_its_host(store):
    """Rank 1 beat once and then no more: after a timeout it did not answer; after a closed
    connection it ended."""
    me = watch(store, 0)
    store.add(f"{peers.ALIVE}/1", 1)
    stopped = me.explain(RuntimeError(TIMED_OUT))
    assert isinstance(stopped, PeerFailure)
    assert str(stopped) == (
        "stage 1's process (rank 1 on host node-b) did not answer within 10 s (stopped, "
        "overloaded or its node unreachable); stage 0's process (rank 0 on host node-a) "
        "gave up (Timed out waiting 10000ms for recv operation to complete)"
    )
    ended = str(me.explain(RuntimeError(CLOSED)))
    assert ended.startswith("stage 1's process (rank 1 on host node-b) ended (its process or")
    assert ended.endswith("gave up (Connection closed by peer [10.0.0.2]:4242)")
    me.stop()


def test_peers_that_still_beat_and_other_errors_are_left_to_their_own_words(store):
    me, peer = watch(store, 0), watch(store, 1)
    assert me.explain(RuntimeError(TIMED_OUT)) is None  # rank 1 is alive: not the one
    started = time.monotonic()
    assert me.explain(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert time.monotonic() - started < 0.1  # no diagnosis for what is not about a peer
    me.stop()
    peer.stop()


@pytest.mark.parametrize(
    ("fault", "what"), [("hang", "did not answer within 10 s"), ("gone", "ended")]
)
def test_a_store_that_does_not_answer_names_its_holder(store, fault, what):
    me = watch(store, 1)
    if fault == "hang":
        store.hang.set()
    else:
        store.gone = True
    started = time.monotonic()
    failure = str(me.explain(RuntimeError(TIMED_OUT)))
    assert failure.startswith(f"the store (on host node-a) {what}"), failure
    assert time.monotonic() - started < 2 * peers.READ_SECONDS + me.quiet_seconds + 1
    me.stop()


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def reference(synthetic_data, tmp_path_factory):
    """An uninterrupted run of the same settings (the single-process engine: the same bits)."""
    out = tmp_path_factory.mktemp("peer_failure") / "reference"
    return Run(out, cli(synthetic_data, out, cpu_step="autograd", **LONG))


def fault_stage_1(run: Run, sig: int, pids: dict) -> tuple[float, float]:
    """Once epoch 1 is written and epoch 2 has begun, send ``sig`` to stage 1's process
    (``pids`` gets the stage processes'); the seconds until a stage's process named the
    fault in the run's stderr, and until the launcher ended."""
    deadline = time.monotonic() + TIMEOUT
    while data_rows(run.out) < 1:
        assert run.proc.poll() is None, run.result().stderr
        assert time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.01)
    pids.update(stage_pids(run.proc.pid))
    assert sorted(pids) == [0, 1], pids
    time.sleep(0.3)
    os.kill(pids[1], sig)
    sent, named = time.monotonic(), None
    stderr = run.out.parent / f"{run.out.name}.stderr"
    while run.proc.poll() is None and time.monotonic() < sent + TIMEOUT:
        if named is None and "error: stage 1's process" in stderr.read_text():
            named = time.monotonic() - sent
        time.sleep(0.05)
    ended = time.monotonic() - sent
    assert named is not None, run.result().stderr
    return named, ended


def end_all(pids: dict) -> None:
    """What the launcher did not end (a test that failed midway): no stopped process stays."""
    for pid in pids.values():
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def assert_resumes_to_the_uninterrupted_bits(out: Path, args: list[str], reference: Run):
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1 and state["batches_done"] == 0  # the last epoch's end
    rerun = Run(out, args).ok()
    assert f"resuming from {out / 'checkpoint.pt'}: epoch {state['epoch'] + 1}, batch 1" in (
        rerun.stdout
    )
    reference.ok()
    assert metric_lines(out) == metric_lines(reference.out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(reference.out / "model.pt"))


@pytest.mark.distributed
def test_a_stopped_stage_fails_the_run_after_the_timeout_naming_it(
    synthetic_data, tmp_path, reference
):
    """SIGSTOP of stage 1 mid-epoch: rank 0 waits the process-group timeout, then fails
    naming stage 1 and its host as not answering (not a hang); the launcher ends the stopped
    process (SIGTERM, then SIGKILL after its grace period) and exits 1."""
    timeout, out = 10, tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", process_group_timeout=timeout, **LONG)
    run, pids = Run(out, args), {}
    try:
        named, ended = fault_stage_1(run, signal.SIGSTOP, pids)
        result = run.result()
    finally:
        end_all(pids)
    print(f"SIGSTOP, timeout {timeout} s: named after {named:.1f} s, launcher ended {ended:.1f} s")
    assert timeout <= named < timeout + 30, named
    assert ended < timeout + 60, ended
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: stage 1's process (rank 1 on host {socket.gethostname()}) did not answer "
        f"within {timeout} s (stopped, overloaded or its node unreachable); stage 0's process"
    ) in result.stderr
    assert "error: a stage's process failed (exit status 1)" in result.stderr
    assert not [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()]
    assert_resumes_to_the_uninterrupted_bits(out, args, reference)


@pytest.mark.distributed
def test_a_killed_stage_fails_the_run_at_once_naming_it(synthetic_data, tmp_path, reference):
    """SIGKILL of stage 1 mid-epoch: rank 0 sees the connection close and fails within
    seconds, long before the timeout, naming stage 1 and its host as ended."""
    timeout, out = 60, tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", process_group_timeout=timeout, **LONG)
    run, pids = Run(out, args), {}
    named, ended = fault_stage_1(run, signal.SIGKILL, pids)
    result = run.result()
    print(f"SIGKILL, timeout {timeout} s: named after {named:.1f} s, launcher ended {ended:.1f} s")
    assert named < 30 and ended < 30, (named, ended)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: stage 1's process (rank 1 on host {socket.gethostname()}) ended (its process "
        "or node is gone); stage 0's process"
    ) in result.stderr
    assert "error: a stage's process failed (killed by SIGKILL)" in result.stderr
    assert not [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()]
    assert_resumes_to_the_uninterrupted_bits(out, args, reference)
