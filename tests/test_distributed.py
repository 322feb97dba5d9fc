"""The distributed engine with real processes: train.py starts one process per stage with
torchrun (fmnist.launch), the stages talk over a real gloo process group on the CPU
(fmnist.ranks, fmnist.pipeline). Its numbers are compared with the single-process engine's.

Every distributed run starts its own interpreters (~3 s); runs that do not depend on each
other start together (module fixture ``runs``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import import_script
from cuda_standin import fake_cuda
from fmnist import settings
from fmnist.devices import DeviceError
from fmnist.launch import EXIT_DIVERGED, free_port, srun_command, worst_exit_status
from fmnist.provenance import provenance_row
from fmnist.ranks import (
    RankEnvironment,
    check_one_process_per_gpu,
    rank_device,
    start_process_group,
)
from fmnist.runfiles import read_run_dir
from test_train import (
    TIMEOUT,
    Run,
    assert_same_tensors,
    cli,
    data_rows,
    load_weights,
    metric_lines,
)

CPU = torch.device("cpu")
train_script = import_script("train")
THREE_STAGES = {"hidden_sizes": [64, 32], "activation": "relu", "devices": ["cpu"] * 3}
# (name, model settings, schedule, micro-batches): 2 and 3 stages, both schedules.
CASES = [
    ("two_gpipe_m1", {}, "gpipe", 1),
    ("two_gpipe_m4", {}, "gpipe", 4),
    ("two_1f1b_m4", {}, "1f1b", 4),
    ("three_gpipe_m2", THREE_STAGES, "gpipe", 2),
    ("three_1f1b_m4", THREE_STAGES, "1f1b", 4),
]
# Long enough to be stopped in the middle of an epoch: 200 steps of 10 rows each.
LONG = {"batch_size": 10, "epochs": 4, "microbatches": 2}


def distributed(data_dir: Path, out: Path, **options) -> Run:
    return Run(out, cli(data_dir, out, engine="distributed", **options))


def single(data_dir: Path, out: Path, **options) -> Run:
    return Run(out, cli(data_dir, out, cpu_step="autograd", **options))


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    started = {}
    for name, model, schedule, micro in CASES:
        options = {"epochs": 2, "microbatches": micro, **model}
        started[name] = distributed(synthetic_data, root / name, schedule=schedule, **options)
        started[f"{name}_single"] = single(synthetic_data, root / f"{name}_single", **options)
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
    assert metric_lines(dist_run.out) == metric_lines(ref.out)
    assert_same_tensors(load_weights(dist_run.out / "model.pt"), load_weights(ref.out / "model.pt"))
    assert not (dist_run.out / "checkpoint.pt").exists()


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
    assert lines[0] == "step,stage,microbatch,phase,start_seconds,end_seconds"
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
    # GPipe on stage 1: its forward of micro-batch 0 starts after stage 0's has ended.
    first = {(int(r[1]), r[3]): float(r[4]) for r in rows if r[0] == "0" and r[2] == "0"}
    ends = {(int(r[1]), r[3]): float(r[5]) for r in rows if r[0] == "0" and r[2] == "0"}
    assert first[(1, "forward")] >= ends[(0, "forward")]


# ------------------------------------------------------------------ stopping a stage


def stage_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the stage processes the launcher started (their RANK variable)."""
    pids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                pids[int(item[5:])] = int(stat.parent.name)
    return pids


def interrupt(run: Run, sig: int, target: str) -> float:
    """Once epoch 1 is written and epoch 2 has begun (an epoch takes ~0.7 s here), send
    ``sig`` to stage 1's process (or to the launcher, as Snakemake or a user would);
    seconds until the launcher has exited."""
    deadline = time.monotonic() + TIMEOUT
    while data_rows(run.out) < 1:
        assert run.proc.poll() is None, run.result().stderr
        assert time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.01)
    pids = stage_pids(run.proc.pid)
    assert sorted(pids) == [0, 1], pids
    time.sleep(0.3)
    os.kill(pids[1] if target == "stage 1" else run.proc.pid, sig)
    sent = time.monotonic()
    run.result()
    return time.monotonic() - sent


@pytest.mark.parametrize(
    ("sig", "target"),
    [(signal.SIGTERM, "stage 1"), (signal.SIGKILL, "stage 1"), (signal.SIGTERM, "launcher")],
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
    if sig == signal.SIGTERM:
        assert result.returncode == 75, result.stdout + result.stderr
        # From the launcher every stage gets it: whichever vote saw it first speaks.
        expected = {"stage 1's process received SIGTERM"}
        if target == "launcher":
            expected.add("received SIGTERM")
        stopped = state["attempts"][0]["stopped"]
        assert stopped in expected, stopped
        assert f"stopping early: {stopped}." in result.stdout
        # Inside epoch 2, unless the signal came while epoch 1 was being evaluated.
        assert state["epoch"] >= 1 and 0 <= state["batches_done"] < 200
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "a stage's process failed" in result.stderr
        assert state["batches_done"] == 0 and state["epoch"] >= 1  # the last epoch's end
    assert set(state["optimizer"]) == {"stages"} and len(state["optimizer"]["stages"]) == 2

    second = Run(out, args).ok()
    assert "resuming from" in second.stdout
    ref = runs["long_single"].ok() and runs["long_single"]
    assert metric_lines(out) == metric_lines(ref.out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(ref.out / "model.pt"))
    assert len(json.loads((out / "run.json").read_text())["attempts"]) == 2


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


def test_exit_statuses_combine_into_the_one_that_says_most():
    assert worst_exit_status([0, 0]) == 0
    assert worst_exit_status([1, 2]) == 2  # permanent: never retried
    assert worst_exit_status([-15, EXIT_DIVERGED]) == EXIT_DIVERGED
    assert worst_exit_status([0, -9]) == 1  # killed by a signal: unexpected


def test_rank_environment_from_torchrun_or_srun():
    torchrun = RankEnvironment.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.launcher) == (1, 2, "torchrun")
    srun = {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}
    task = RankEnvironment.from_environment(srun)
    assert (task.rank, task.world_size, task.local_rank, task.slurm_task) == (2, 3, 0, "2")
    with pytest.raises(DeviceError, match="neither torchrun"):
        RankEnvironment.from_environment({})


def test_rank_devices_without_a_gpu():
    assert rank_device(["cpu", "cpu"], 1, 1, "torchrun") == CPU
    assert rank_device(["cpu"], 2, 0, "srun") == CPU
    if not torch.cuda.is_available():
        assert rank_device("auto", 0, 0, "torchrun") == CPU
        with pytest.raises(DeviceError, match="stage 1 for cuda"):
            rank_device(["cuda", "cuda"], 1, 1, "torchrun")


@pytest.mark.parametrize(
    ("requested", "visible", "launcher", "expected"),
    [
        # torchrun's processes see every GPU of the node: indices as written.
        (["cuda:0", "cuda:1"], 2, "torchrun", ["cuda:0", "cuda:1"]),
        (["cuda:1", "cuda:0"], 2, "torchrun", ["cuda:1", "cuda:0"]),
        ("auto", 2, "torchrun", ["cuda:0", "cuda:1"]),
        (["cuda", "cuda"], 2, "torchrun", ["cuda:0", "cuda:1"]),
        # srun binds each task to its own GPU, renumbered cuda:0 in the task.
        (["cuda:0", "cuda:1"], 1, "srun", ["cuda:0", "cuda:0"]),
        ("auto", 1, "srun", ["cuda:0", "cuda:0"]),
    ],
)
def test_rank_devices_under_torchrun_and_srun_binding(
    monkeypatch, requested, visible, launcher, expected
):
    fake_cuda(monkeypatch, visible)
    got = [rank_device(requested, rank, rank, launcher) for rank in range(2)]
    assert got == [torch.device(d) for d in expected]


def test_an_index_no_process_sees_is_refused(monkeypatch):
    fake_cuda(monkeypatch, 1)
    with pytest.raises(DeviceError, match="stage 1 for cuda:1 but this process sees 1 GPU"):
        rank_device(["cuda:0", "cuda:1"], 1, 1, "torchrun")


def rank_records(devices: list[str], uuids: list, host: str = "node1") -> list[dict]:
    return [
        {"rank": r, "hostname": host, "device": d, "gpu_uuid": u}
        for r, (d, u) in enumerate(zip(devices, uuids))
    ]


def test_two_stage_processes_on_one_gpu_are_refused_naming_the_setting():
    """NCCL refuses a communicator with two ranks on one GPU ("Duplicate GPU detected"), an
    error our launcher would take for a transient failure: the ranks refuse it first."""
    check_one_process_per_gpu(rank_records(["cuda:0", "cuda:1"], ["a", "b"]))
    check_one_process_per_gpu(rank_records(["cpu", "cpu"], [None, None]))
    # Under srun both tasks say cuda:0: their own GPUs, told apart by UUID.
    check_one_process_per_gpu(rank_records(["cuda:0", "cuda:0"], ["a", "b"]))
    with pytest.raises(DeviceError) as error:
        check_one_process_per_gpu(rank_records(["cuda:0", "cuda:0", "cuda:1"], ["a", "a", "b"]))
    message = str(error.value)
    assert message.startswith("train.devices: stage 0 (cuda:0), stage 1 (cuda:0) would share")
    assert "NCCL allows one process per GPU" in message and "single_process" in message


@pytest.fixture
def peer_store(monkeypatch):
    """Rank 0's side of a rendezvous (a real TCPStore on 127.0.0.1), for a rank 1 tested here."""
    port = free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    yield torch.distributed.PrefixStore("fmnist/ranks", store)


def test_a_rank_sharing_a_gpu_with_another_stops_before_nccl(monkeypatch, peer_store):
    """auto with one visible GPU and two local processes: both would take cuda:0. Rank 1
    learns it from rank 0's record in the rendezvous store and refuses before any
    communicator is made."""
    cuda = fake_cuda(monkeypatch, 1)
    rank0 = {"rank": 0, "hostname": "h", "device": "cuda:0", "gpu_uuid": str(cuda.uuids[0])}
    peer_store.set("0", json.dumps(rank0))

    def no_communicator(*args, **kwargs):
        raise AssertionError("init_process_group reached with two ranks on one GPU")

    monkeypatch.setattr(torch.distributed, "init_process_group", no_communicator)
    env = RankEnvironment(rank=1, world_size=2, local_rank=1, launcher="torchrun")
    with pytest.raises(DeviceError, match="would share one GPU"):
        start_process_group(env, "auto", timeout_seconds=10)


def test_nccl_is_joined_on_the_rank_s_own_gpu_after_set_device(monkeypatch, peer_store):
    """NCCL's rules our ranks rely on: the communicator is bound to the rank's own GPU
    (device_id), object collectives use the current device, so set_device comes first, and
    tensors for collectives live on that GPU (comm_device)."""
    cuda = fake_cuda(monkeypatch, 2)
    rank0 = {"rank": 0, "hostname": "h", "device": "cuda:0", "gpu_uuid": str(cuda.uuids[0])}
    peer_store.set("0", json.dumps(rank0))
    joined = {}

    def init_process_group(backend, **kwargs):
        joined.update(kwargs, backend=backend, current_device=cuda.current_device())

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    env = RankEnvironment(rank=1, world_size=2, local_rank=1, launcher="torchrun")
    ctx = start_process_group(env, "auto", timeout_seconds=10)
    assert joined["backend"] == "nccl" and joined["device_id"] == torch.device("cuda:1")
    assert joined["current_device"] == 1 and cuda.set_device_calls == [1]
    assert (joined["rank"], joined["world_size"]) == (1, 2)
    assert ctx.comm_device == torch.device("cuda:1")
    assert [r["gpu_uuid"] for r in ctx.ranks] == [str(u) for u in cuda.uuids]
    assert ctx.ranks[1]["device_name"] == "Fake GPU 1"


def test_srun_starts_one_task_per_stage_with_its_cpus_and_gpu():
    words = srun_command(4, threads=3, gpus=True, tasks_per_node=2)
    assert words[:4] == ["srun", "--ntasks=4", "--cpus-per-task=3", "--kill-on-bad-exit=1"]
    assert "--ntasks-per-node=2" in words and "--gpus-per-task=1" in words
    assert "--gpus-per-task=1" not in srun_command(2, 1, False, None)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"devices": ["cpu"]}, "this model has one stage"),
        ({"devices": ["cpu", "cuda"]}, "the same kind of device"),
        ({"microbatches": 3}, "multiple of train.microbatches"),
        ({"devices": ["cuda:0", "cuda:0"]}, r"\[cuda:0, cuda:0\]|puts several stages on cuda:0"),
        ({"devices": ["cuda:1"]}, "puts several stages on cuda:1, but train.engine distributed"),
        ({"devices": ["cuda", "cuda:1", "cuda:1"], "hidden_sizes": [64, 32]}, "per GPU"),
    ],
)
def test_distributed_settings_that_cannot_work_are_refused(overlay, message):
    params = {**settings.defaults()["train"], "engine": "distributed", **overlay}
    if overlay.get("devices") == ["cpu"]:
        params["stage_split"] = [2]
    with pytest.raises(settings.SettingError, match=message):
        settings.check_run_params(params)


@pytest.mark.parametrize("devices", [["cuda:0", "cuda:1"], ["cuda", "cuda"], "auto", ["cpu"]])
def test_distributed_layouts_with_a_gpu_per_process_pass_the_config_check(devices):
    params = {**settings.defaults()["train"], "engine": "distributed", "devices": devices}
    settings.check_run_params(params)


def test_auto_with_fewer_gpus_than_stages_exits_2_before_any_stage_starts(
    monkeypatch, tmp_path, capsys, torch_state, synthetic_data
):
    """Locally the launcher knows every stage's device before torchrun starts them: one GPU
    for two stage processes is refused at once (exit 2, never requeued), naming the setting."""
    fake_cuda(monkeypatch, 1)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    started = []
    monkeypatch.setattr(train_script, "launch_stages", lambda *a, **k: started.append(a) or 0)
    args = cli(synthetic_data, tmp_path / "run", engine="distributed", devices="auto")
    with pytest.raises(SystemExit) as exit_:
        train_script.main(args)
    assert exit_.value.code == 2 and not started
    err = capsys.readouterr().err
    assert "error: train.devices: stage 0 (cuda:0), stage 1 (cuda:0) would share one GPU" in err
