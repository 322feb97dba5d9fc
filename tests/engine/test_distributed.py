"""The distributed engine with real processes: train.py starts one process per stage with
torchrun (fmnist.engine.launch), the stages talk over a real gloo process group on the CPU
(fmnist.engine.ranks, fmnist.engine.distributed). Its numbers are compared with the single-process
engine's.

Every distributed run starts its own interpreters (~3 s); runs that do not depend on each
other start together (module fixture ``runs``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from fmnist.report.provenance import provenance_row
from fmnist.report.timeline_figure import check_timeline, read_timeline
from fmnist.rundir.files import exclusive_lock
from fmnist.rundir.runfiles import LOCK_FILE, read_run_dir
from helpers import (
    ENV,
    TIMEOUT,
    Run,
    assert_same_tensors,
    cli,
    data_rows,
    import_script,
    interrupt,
    load_weights,
    metric_lines,
    stage_pids,
)
from torch.distributed.checkpoint import FileSystemReader

pytestmark = pytest.mark.distributed
CPU = torch.device("cpu")
train_script = import_script("train")
THREE_STAGES = {"hidden_sizes": [64, 32], "activation": "relu", "devices": ["cpu"] * 3}
# Four stages, two in each of two processes: a loop (0, 2 | 1, 3) or a V (0, 3 | 1, 2).
FOUR_IN_TWO = {"hidden_sizes": [64, 48, 32], "activation": "relu", "devices": ["cpu"]}
FOUR_IN_TWO |= {"stage_split": [1, 1, 1, 1], "stages_per_process": 2}
# (name, model settings, schedule, micro-batches): 2 and 3 stages, both schedules, and
# every schedule with several stages per process.
CASES = [
    ("two_gpipe_m1", {}, "gpipe", 1),
    ("two_gpipe_m4", {}, "gpipe", 4),
    ("two_1f1b_m4", {}, "1f1b", 4),
    ("three_gpipe_m2", THREE_STAGES, "gpipe", 2),
    ("three_1f1b_m4", THREE_STAGES, "1f1b", 4),
    *[
        (f"four_{schedule}_m4", FOUR_IN_TWO, schedule, 4)
        for schedule in (
            "interleaved_1f1b",
            "interleaved_zero_bubble",
            "zbv_zero_bubble",
            "dual_pipe_v",
            "looped_bfs",
        )
    ],
]
SUMMED_IN_REVERSE = {"four_looped_bfs_m4"}
"""ScheduleLoopedBFS runs the micro-batches' backward passes last to first: the gradients
are summed in the other order, so the numbers equal the single process's only up to
float32 rounding (RELATIVE after two epochs here). Every other schedule sums them first to
last, even the zero-bubble ones that compute weight gradients apart: the same bits."""
RELATIVE = 1e-4
# Long enough to be stopped in the middle of an epoch: 200 steps of 10 rows each.
LONG = {"batch_size": 10, "epochs": 4, "microbatches": 2}


def distributed(data_dir: Path, out: Path, **options) -> Run:
    return Run(out, cli(data_dir, out, engine="distributed", **options))


def single(data_dir: Path, out: Path, **options) -> Run:
    return Run(out, cli(data_dir, out, cpu_step="autograd", **options))


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    started, singles = {}, {}
    for name, model, schedule, micro in CASES:
        options = {"epochs": 2, "microbatches": micro, **model}
        started[name] = distributed(synthetic_data, root / name, schedule=schedule, **options)
        same = json.dumps(options, sort_keys=True)  # one single-process run per model
        if same not in singles:
            singles[same] = single(synthetic_data, root / f"{name}_single", **options)
        started[f"{name}_single"] = singles[same]
        started[name].result()  # two at a time: the machine may have two cores
    started["long_single"] = single(synthetic_data, root / "long_single", **LONG)
    return started


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_distributed_gives_the_single_process_bits(runs, case):
    """Same losses, metrics and final weights, to the bit, for 2 and 3 stages and both
    schedules: the engines share the micro-batch arithmetic (model.microbatch_loss, one
    backward pass per micro-batch in order, no gradient rescaling)."""
    dist_run, ref = runs[case], runs[f"{case}_single"]
    dist_run.ok(), ref.ok()
    assert len(metric_lines(dist_run.out)) == 3
    weights, ref_weights = (
        load_weights(dist_run.out / "model.pt"),
        load_weights(ref.out / "model.pt"),
    )
    if case in SUMMED_IN_REVERSE:
        assert metric_lines(dist_run.out) != metric_lines(ref.out)  # else it is not in reverse
        for mine, theirs in zip(metric_rows(dist_run.out), metric_rows(ref.out)):
            assert mine == pytest.approx(theirs, rel=RELATIVE)
        for name, tensor in weights.items():
            torch.testing.assert_close(tensor, ref_weights[name], rtol=RELATIVE, atol=RELATIVE)
    else:
        assert metric_lines(dist_run.out) == metric_lines(ref.out)
        assert_same_tensors(weights, ref_weights)
    assert not (dist_run.out / "checkpoint.pt").exists()


def metric_rows(out: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in metric_lines(out)[1:]]


def test_run_json_names_engine_schedule_and_every_rank(runs):
    runs["three_1f1b_m4"].ok()
    record = json.loads((runs["three_1f1b_m4"].out / "run.json").read_text())
    assert record["params"]["engine"] == "distributed"
    assert record["params"]["schedule"] == "1f1b"
    assert record["setup"]["train_step"] == "Schedule1F1B"
    assert record["setup"]["world_size"] == 3
    assert record["setup"]["process_group_backend"] == "gloo"
    (attempt,) = record["attempts"]
    assert [r["rank"] for r in attempt["ranks"]] == [0, 1, 2]
    assert {r["device"] for r in attempt["ranks"]} == {"cpu"}
    assert all(r["hostname"] and r["device_name"] for r in attempt["ranks"])
    assert attempt["device_names"] == [r["device_name"] for r in attempt["ranks"]]
    # The provenance table names the schedule, the processes and their host(s).
    row = provenance_row(read_run_dir(runs["three_1f1b_m4"].out))
    assert (row["train_step"], row["processes"]) == ("Schedule1F1B", 3)
    assert row["hostname"] == attempt["ranks"][0]["hostname"]


def test_timeline_holds_every_stage_and_micro_batch(runs):
    runs["two_gpipe_m4"].ok()
    lines = (runs["two_gpipe_m4"].out / "timeline.csv").read_text().splitlines()
    assert (
        lines[0] == "step,stage,microbatch,phase,start_seconds,end_seconds,host,clock_error_seconds"
    )
    rows = [line.split(",") for line in lines[1:]]
    passes = {(int(r[0]), int(r[1]), int(r[2]), r[3]) for r in rows}
    expected = {
        (step, stage, mb, phase)
        for step in range(4)
        for stage in range(2)
        for mb in range(4)
        for phase in ("forward", "backward")
    }
    assert passes == expected and len(rows) == len(expected)
    assert all(0 <= float(r[4]) <= float(r[5]) for r in rows)
    # Both stages on this host: one clock, no alignment error.
    assert {(r[6], r[7]) for r in rows} == {(socket.gethostname(), "0.0")}
    # GPipe on stage 1: its forward of micro-batch 0 starts after stage 0's has ended.
    first = {(int(r[1]), r[3]): float(r[4]) for r in rows if r[0] == "0" and r[2] == "0"}
    ends = {(int(r[1]), r[3]): float(r[5]) for r in rows if r[0] == "0" and r[2] == "0"}
    assert first[(1, "forward")] >= ends[(0, "forward")]


# ------------------------------------------------------------------ stopping a stage


@pytest.mark.parametrize(
    ("sig", "target"),
    [
        (signal.SIGTERM, "stage 1"),
        (signal.SIGKILL, "stage 1"),
        (signal.SIGTERM, "launcher"),
        (signal.SIGHUP, "launcher"),
    ],
)
def test_a_stopped_stage_ends_the_run_and_the_rerun_is_exact(
    runs, synthetic_data, tmp_path, sig, target
):
    """SIGTERM to stage 1: every stage stops after the same batch and rank 0 saves a
    checkpoint (exit 75). SIGTERM to the launcher: it passes it on to the stages, the same.
    SIGKILL of stage 1: the others fail at once (gloo sees the closed connection; the
    process-group timeout bounds any other hang), exit 1, and the last epoch's checkpoint
    remains. Each time the rerun ends with the uninterrupted run's bits."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", process_group_timeout=30, **LONG)
    first = Run(out, args)
    took = interrupt(first, sig, target)
    result = first.result()
    assert took < 60, f"the stages took {took:.0f} s to stop"
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    if sig != signal.SIGKILL:
        assert result.returncode == 75, result.stdout + result.stderr
        # From the launcher every stage gets it: whichever vote saw it first speaks.
        expected = {f"stage 1's process received {sig.name}"}
        if target == "launcher":
            expected.add(f"received {sig.name}")
        stopped = state["attempts"][0]["stopped"]
        assert stopped in expected, stopped
        assert f"stopping early: {stopped}." in result.stdout
        # Inside epoch 2, unless the signal came while epoch 1 was being evaluated.
        assert state["epoch"] >= 1 and 0 <= state["batches_done"] < 200
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "error: a stage's process failed (killed by SIGKILL)" in result.stderr
        assert "Traceback" not in result.stderr.split("a stage's process failed")[-1]
        assert state["batches_done"] == 0 and state["epoch"] >= 1  # the last epoch's end
    shards = FileSystemReader(out / f"checkpoint.{state['shards']}.dcp").read_metadata()
    files = {item.relative_path for item in shards.storage_data.values()}
    assert files == {"__0_0.distcp", "__1_0.distcp"}  # written by each stage

    second = Run(out, args).ok()
    assert "resuming from" in second.stdout
    ref = runs["long_single"].ok() and runs["long_single"]
    assert metric_lines(out) == metric_lines(ref.out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(ref.out / "model.pt"))
    assert len(json.loads((out / "run.json").read_text())["attempts"]) == 2


def with_faults(**faults: str) -> dict:
    """The environment of a run whose stage processes meet ``faults`` (fault_hook/)."""
    hook = Path(__file__).parent / "fault_hook"
    path = os.pathsep.join(filter(None, [str(hook), ENV.get("PYTHONPATH")]))
    return {**ENV, "PYTHONPATH": path, **{f"FMNIST_FAULT_{k}": v for k, v in faults.items()}}


def test_a_stage_dying_after_the_outputs_leaves_a_finished_run(runs, synthetic_data, tmp_path):
    """Stage 1 exits 1 once the outputs are complete: the launcher says so and the run is
    finished (exit 0), its outputs and numbers intact; before, the job failed and lost them."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", epochs=2, microbatches=1)
    result = Run(out, args, env=with_faults(EXIT_AT_END="1")).result()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "warning: a stage's process ended with exit status 1 after the run's outputs were "
        "complete; the run is finished"
    ) in result.stdout
    assert not (out / "checkpoint.pt").exists()
    reference = runs["two_gpipe_m1_single"].ok() and runs["two_gpipe_m1_single"].out
    assert metric_lines(out) == metric_lines(reference)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(reference / "model.pt"))
    assert read_run_dir(out).run_id == "run"


def test_a_stop_before_the_first_checkpoint_is_no_finished_run(synthetic_data, tmp_path):
    """SIGTERM to the launcher while the stages start: they end without a checkpoint; the
    launcher exits 75 (stopped), saying so, not 0 (finished) with nothing trained."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", epochs=2)
    run = Run(out, args, env=with_faults(SLOW_START="60"))
    deadline = time.monotonic() + TIMEOUT
    while len(stage_pids(run.proc.pid)) < 2:
        assert run.proc.poll() is None, run.result().stderr
        assert time.monotonic() < deadline, "the stage processes never started"
        time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    result = run.result()
    assert result.returncode == 75, result.stdout + result.stderr
    assert (
        "the stage processes stopped early, before they could save a checkpoint: the next "
        "attempt starts the run from the beginning"
    ) in result.stdout
    assert "Training finished" not in result.stdout
    assert not (out / "checkpoint.pt").exists() and not (out / "run.json").exists()


def test_the_stages_end_when_their_launcher_is_killed(synthetic_data, tmp_path):
    """kill -KILL of the launcher (an OOM killer, a lost session): the kernel sends its stages
    SIGTERM; they stop together, save their checkpoint and free the run folder's lock."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", **{**LONG, "epochs": 100})
    run = Run(out, args)
    deadline = time.monotonic() + TIMEOUT
    while data_rows(out) < 1:
        assert run.proc.poll() is None, run.result().stderr
        assert time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.05)
    pids = stage_pids(run.proc.pid)
    assert sorted(pids) == [0, 1], pids
    run.proc.send_signal(signal.SIGKILL)
    run.result()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids.values()):
        assert time.monotonic() < deadline, f"stage processes {pids} outlived their launcher"
        time.sleep(0.1)
    with exclusive_lock(out / LOCK_FILE, "the run folder"):
        pass  # free: a rerun may start
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["attempts"][0]["stopped"].endswith("received SIGTERM")


def test_a_last_batch_that_micro_batches_cannot_split_is_refused(synthetic_data, tmp_path):
    """2000 rows in batches of 66 leave 20, which 3 micro-batches cannot split evenly."""
    out = tmp_path / "run"
    result = Run(
        out, cli(synthetic_data, out, engine="distributed", batch_size=66, microbatches=3)
    ).result()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "leave a last batch of 20 rows" in result.stderr
    assert "train.microbatches (3)" in result.stderr


def test_a_busy_run_folder_is_refused_by_rank_0(synthetic_data, tmp_path):
    """A second start on a run folder in use exits 2 naming the holder; the first goes on
    (until it is told to stop: a SIGTERM to its launcher, exit 75)."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", **{**LONG, "epochs": 100})
    first = Run(out, args)
    deadline = time.monotonic() + TIMEOUT
    while data_rows(out) < 1 and time.monotonic() < deadline:
        assert first.proc.poll() is None, first.result().stderr
        time.sleep(0.05)
    second = Run(tmp_path / "second", args).result()  # its own stdout/stderr files
    assert second.returncode == 2, second.stdout + second.stderr
    assert "is being written by process" in second.stderr
    assert first.proc.poll() is None
    first.proc.send_signal(signal.SIGTERM)
    assert first.result().returncode == 75, first.result().stderr


# ------------------------------------------------------------------ the parts


def test_a_stage_killed_in_the_middle_of_a_save_leaves_the_previous_checkpoint(
    runs, synthetic_data, tmp_path
):
    """Stage 1 writes its shard of the second checkpoint (end of epoch 2) and is killed
    before the save is complete: checkpoint.pt still names the first, whole; the rerun
    resumes from it, deletes the half-written one, and ends with the uninterrupted bits."""
    out = tmp_path / "run"
    args = cli(synthetic_data, out, engine="distributed", process_group_timeout=30, **LONG)
    first = Run(out, args, env=with_faults(KILL_IN_SAVE="1:2"))
    result = first.result()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: a stage's process failed (killed by SIGKILL)" in result.stderr
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["shards"], state["epoch"], state["batches_done"]) == (1, 1, 0)
    cut_short = out / "checkpoint.2.dcp"
    assert (cut_short / "__1_0.distcp").is_file() and not (cut_short / ".metadata").exists()

    second = Run(out, args).ok()
    assert f"resuming from {out / 'checkpoint.pt'}: epoch 2, batch 1" in second.stdout
    ref = runs["long_single"].ok() and runs["long_single"]
    assert metric_lines(out) == metric_lines(ref.out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(ref.out / "model.pt"))
    assert not list(out.glob("checkpoint*"))


@pytest.mark.parametrize("case", ["four_interleaved_zero_bubble_m4", "four_dual_pipe_v_m4"])
def test_zero_bubble_timelines_hold_the_weight_passes(runs, case):
    """Four stages in two processes: every stage and micro-batch has its forward and
    backward pass once a step, and the weight gradients computed apart are passes of their
    own (all of them in interleaved zero bubble; DualPipeV splits only some)."""
    runs[case].ok()
    path = runs[case].out / "timeline.csv"
    timeline = read_timeline(path)
    check_timeline(timeline, 4, path)
    assert sorted(set(timeline["stage"])) == [0, 1, 2, 3]
    weights = timeline[timeline["phase"] == "weight"]
    per_step = len(weights) / timeline["step"].nunique()
    assert per_step == 16 if "interleaved" in case else 0 < per_step < 16
