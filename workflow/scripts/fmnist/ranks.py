"""Which process of a distributed run this is, and the process group the stages talk over.

RankEnvironment only reads what the launcher set: torchrun's RANK, WORLD_SIZE and
LOCAL_RANK, or, in a task that srun started, SLURM's own SLURM_PROCID, SLURM_NTASKS and
SLURM_LOCALID; the address to meet at is MASTER_ADDR:MASTER_PORT either way (torchrun
sets them; under SLURM fmnist.launch does, on the job's first node, where task 0 runs).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .devices import DeviceError, device_name, visible_cuda


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


def rank_device(requested, rank: int, local_rank: int) -> torch.device:
    """Stage ``rank``'s device from train.devices (auto, one per stage, or one for all);
    a bare cuda (or auto) is the GPU of this node matching the process's local rank."""
    count = torch.cuda.device_count()
    if requested == "auto":
        name = "cuda" if count else "cpu"
    else:
        name = requested[rank] if len(requested) > 1 else requested[0]
    device = torch.device(name)
    if device.type == "cuda":
        if count == 0 or (device.index is not None and device.index >= count):
            raise DeviceError(
                f"train.devices asks stage {rank} for {name} but this process sees no such "
                f"GPU ({visible_cuda()}); use devices: auto or cpu"
            )
        device = torch.device("cuda", local_rank % count if device.index is None else device.index)
    return device


def start_process_group(env: RankEnvironment, requested, timeout_seconds: int) -> RankContext:
    """Join the other stages (bounded by ``timeout_seconds``) and learn about them."""
    device = rank_device(requested, env.rank, env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {"device_id": device} if backend == "nccl" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=dt.timedelta(seconds=timeout_seconds),
        **options,
    )
    me = {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "slurm_task_id": env.slurm_task,
    }
    ranks = [None] * env.world_size
    dist.all_gather_object(ranks, me)
    return RankContext(env, device, backend, ranks)


def stop_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
