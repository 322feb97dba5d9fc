"""The distributed engine's parts that need no process group: which process is which rank,
which device it takes (CUDA, NCCL and srun's rules enforced by stand-ins), how its processes
are started and how their exit statuses combine, what the config refuses."""

from __future__ import annotations

import json

import pytest
import torch
from cuda_standin import fake_cuda
from fmnist.config import checks, settings
from fmnist.config.checks import check_stop_margin, stop_grace_seconds
from fmnist.config.settings import SettingError
from fmnist.engine.devices import DeviceError
from fmnist.engine.launch import (
    EXIT_DIVERGED,
    exit_status_text,
    free_port,
    launch_stages,
    srun_command,
    worst_exit_status,
)
from fmnist.engine.ranks import (
    RankEnvironment,
    check_one_process_per_gpu,
    rank_device,
    start_process_group,
)
from helpers import (
    cli,
    import_script,
)

CPU = torch.device("cpu")
train_script = import_script("train")


def test_exit_statuses_combine_into_the_one_that_says_most():
    assert worst_exit_status([0, 0]) == 0
    assert worst_exit_status([1, 2]) == 2  # permanent: never retried
    assert worst_exit_status([-15, EXIT_DIVERGED]) == EXIT_DIVERGED
    assert worst_exit_status([0, -9]) == -9  # killed by a signal: unexpected, and named
    assert exit_status_text(-9) == "killed by SIGKILL"
    assert exit_status_text(1) == "exit status 1"


def test_torchrun_gives_the_stages_the_time_their_checkpoint_needs(monkeypatch):
    """torch's own 30 s cut off the stop checkpoints of large models: the grace period
    follows the model (and a SLURM margin shorter than it is refused by the config check)."""
    seen = {}

    def launcher(config, entrypoint):
        seen["timeout"] = config.shutdown_timeout
        return lambda *argv: None

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", launcher)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    big = {"hidden_sizes": [8192] * 4, "batch_size": 100}  # 208 M weights: 2.5 GB to save
    assert stop_grace_seconds({"hidden_sizes": [200], "batch_size": 100}) == 31
    assert stop_grace_seconds(big) == 30 + 250
    assert launch_stages(["train.py"], 2, 1, False, None, stop_grace_seconds(big)) == 0
    assert seen["timeout"] == 280
    with pytest.raises(SettingError, match=r"signal_seconds \(90\) is too short .* at least 280"):
        check_stop_margin(big, 90, "big")


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
        ({"devices": ["cpu"]}, "needs two processes or more"),
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
        checks.check_run_params(params)


@pytest.mark.parametrize("devices", [["cuda:0", "cuda:1"], ["cuda", "cuda"], "auto", ["cpu"]])
def test_distributed_layouts_with_a_gpu_per_process_pass_the_config_check(devices):
    params = {**settings.defaults()["train"], "engine": "distributed", "devices": devices}
    checks.check_run_params(params)


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
