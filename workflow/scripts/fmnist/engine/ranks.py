"""Which process of a distributed run this is, and the process group the stages talk over.

RankEnvironment only reads what the launcher set: torchrun's RANK, WORLD_SIZE and
LOCAL_RANK, or, in a task that srun started, SLURM's own SLURM_PROCID, SLURM_NTASKS and
SLURM_LOCALID; the address to meet at is MASTER_ADDR:MASTER_PORT either way (torchrun
sets them; under SLURM fmnist.engine.launch does, on the job's first node, where task 0 runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fmnist.engine.devices import DeviceError, device_name, visible_cuda
from fmnist.engine.peers import PeerWatch


@dataclass
class RankEnvironment:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # torchrun or srun
    slurm_task: str | None = None

    @classmethod
    def from_environment(cls, env=os.environ) -> RankEnvironment:
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world, local = env["RANK"], env["WORLD_SIZE"], env.get("LOCAL_RANK", "0")
            launcher = "torchrun"
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            rank, world, local = env["SLURM_PROCID"], env["SLURM_NTASKS"], env["SLURM_LOCALID"]
            launcher = "srun"
        else:
            raise DeviceError(
                "train.engine distributed: this process was started as a stage's process "
                "but neither torchrun (RANK, WORLD_SIZE) nor srun (SLURM_PROCID, SLURM_NTASKS) "
                "says which; run train.py without --as-rank and it starts the stages itself"
            )
        return cls(int(rank), int(world), int(local), launcher, env.get("SLURM_PROCID"))


@dataclass
class RankContext:
    """This process's place in the run: its stage, its device, and every rank's record."""

    env: RankEnvironment
    device: torch.device
    backend: str
    ranks: list[dict] = field(default_factory=list)  # each rank's host, device, task id
    peers: PeerWatch | None = None  # who stopped answering, when a collective fails

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def devices(self) -> list[torch.device]:
        """Each stage's device as its own process names it."""
        return [torch.device(r["device"]) for r in self.ranks]

    @property
    def comm_device(self) -> torch.device:
        """Where tensors for collectives live: NCCL only moves GPU memory."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def rank_device(requested, rank: int, local_rank: int, launcher: str) -> torch.device:
    """Stage ``rank``'s device from train.devices (auto, one per stage, or one for all).

    A bare ``cuda`` (or auto) is this process's GPU on its node, the one matching its
    local rank. An index names a GPU as a process that sees all of the node's GPUs numbers
    it (torchrun's processes do). srun binds each task to its own GPU, which the task then
    sees as its only one, cuda:0: there the binding decides which GPU a stage gets, and the
    index is read through it.
    """
    count = torch.cuda.device_count()
    if requested == "auto":
        name = "cuda" if count else "cpu"
    else:
        name = requested[rank] if len(requested) > 1 else requested[0]
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if count == 0:
        raise DeviceError(
            f"train.devices asks stage {rank} for {name} but this process sees no GPU "
            f"({visible_cuda()}); use devices: auto or cpu"
        )
    if device.index is None:
        return torch.device("cuda", local_rank % count)
    if device.index < count:
        return device
    if launcher == "srun" and count == 1:
        return torch.device("cuda", 0)  # the one GPU srun bound this task to
    raise DeviceError(
        f"train.devices asks stage {rank} for {name} but this process sees {count} GPU(s) "
        f"({visible_cuda()}); use devices: auto, [cuda, cuda] (each process's own GPU) or cpu"
    )


def gpu_id(device: torch.device) -> str | None:
    """What tells one GPU from another across processes: its UUID (None for the CPU)."""
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def check_one_process_per_gpu(ranks: list[dict]) -> None:
    """NCCL allows one process per GPU ("Duplicate GPU detected" otherwise, an error that
    looks transient): refuse two stages' processes on one GPU, naming the setting."""
    holders: dict[str, list[dict]] = {}
    for record in ranks:
        if record["gpu_uuid"] is not None:
            holders.setdefault(record["gpu_uuid"], []).append(record)
    for shared in holders.values():
        if len(shared) > 1:
            who = ", ".join(f"stage {r['rank']} ({r['device']})" for r in shared)
            raise DeviceError(
                f"train.devices: {who} would share one GPU on {shared[0]['hostname']}, but "
                "train.engine distributed runs one process per stage and NCCL allows one "
                "process per GPU; give each stage its own GPU (as many visible as stages), or "
                "use train.engine single_process, which can put several stages on one GPU"
            )


def check_local_stage_devices(requested, stages: int) -> None:
    """Before torchrun starts the stages on this machine: the device each stage's process
    will take (rank = local rank here), no GPU taken by two of them."""
    devices = [rank_device(requested, rank, rank, "torchrun") for rank in range(stages)]
    host = socket.gethostname()
    check_one_process_per_gpu(
        [
            {"rank": rank, "device": str(d), "gpu_uuid": gpu_id(d), "hostname": host}
            for rank, d in enumerate(devices)
        ]
    )


def rank_record(env: RankEnvironment, device: torch.device) -> dict:
    """This process's entry in run.json's attempts[].ranks."""
    return {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "gpu_uuid": gpu_id(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "slurm_task_id": env.slurm_task,
    }


def exchange_records(store, me: dict, world_size: int) -> list[dict]:
    """Every rank's record, through the rendezvous store: no communicator exists yet."""
    store = dist.PrefixStore("fmnist/ranks", store)
    store.set(str(me["rank"]), json.dumps(me))
    return [json.loads(store.get(str(r))) for r in range(world_size)]


def start_process_group(env: RankEnvironment, requested, timeout_seconds: int) -> RankContext:
    """Join the other stages (bounded by ``timeout_seconds``) and learn about them.

    The processes meet at the rendezvous store first and check each other's devices there,
    before NCCL makes a communicator (and refuses two processes on one GPU in its own way).
    """
    device = rank_device(requested, env.rank, env.local_rank, env.launcher)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    timeout = dt.timedelta(seconds=timeout_seconds)
    store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
    store.set_timeout(timeout)
    ranks = exchange_records(store, rank_record(env, device), env.world_size)
    check_one_process_per_gpu(ranks)
    peers = PeerWatch(store, env.rank, ranks, timeout_seconds, store_holder(env, ranks))
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("default_pg", store),
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        **({"device_id": device} if backend == "nccl" else {}),
    )
    return RankContext(env, device, backend, ranks, peers)


def store_holder(env: RankEnvironment, ranks: list[dict]) -> str:
    """Who serves the rendezvous store: torchrun's agent, or under srun rank 0's process."""
    if env.launcher == "torchrun":
        return f"the rendezvous store (torchrun's, on host {ranks[0]['hostname']})"
    return f"stage 0's process (rank 0 on host {ranks[0]['hostname']}, which serves the store)"


def stop_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
