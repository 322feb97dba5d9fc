"""Which devices the stages run on: the setting train.devices resolved against what is visible."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

import torch


class DeviceError(ValueError):
    """train.devices asks for devices this process cannot use; the message says why."""


def visible_cuda() -> str:
    return (
        f"torch.cuda.device_count()={torch.cuda.device_count()}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}"
    )


def resolve_devices(requested: str | list[str], stages: int = 2) -> tuple[list[torch.device], str]:
    """The torch devices of ``stages`` stages for the setting ("auto", one device per
    stage, or one device for all) and a line saying how they were chosen; DeviceError
    names what cannot be used.

    auto: as many GPUs as stages visible -> one per stage; fewer -> the stages in
    contiguous groups, one group per GPU (one GPU: all stages on it); none -> the CPU.
    """
    if requested == "auto":
        count = torch.cuda.device_count()
        every = "both stages" if stages == 2 else "every stage"
        if count >= stages:
            names = [f"cuda:{s}" for s in range(stages)]
            why = f"{count} GPUs visible: one per stage"
        elif count == 1:
            names, why = ["cuda:0"] * stages, f"one GPU visible: {every} on it"
        elif count > 1:
            names = [f"cuda:{s * count // stages}" for s in range(stages)]
            why = f"{count} GPUs visible for {stages} stages: neighbouring stages share one"
        else:
            names, why = ["cpu"] * stages, f"no GPU visible: {every} on the CPU"
        return [torch.device(n) for n in names], f"devices: auto -> {names} ({why})"
    if len(requested) not in (1, stages):
        raise DeviceError(
            f"train.devices needs 1 device or one per stage ({stages}), got {requested}"
        )
    try:
        devices = [torch.device(name) for name in requested]
    except RuntimeError as err:
        raise DeviceError(f"train.devices: {err}") from None
    devices = devices * stages if len(devices) == 1 else devices
    for device in devices:
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise DeviceError(
                f"train.devices requests {requested} but {device} is not visible "
                f"({visible_cuda()}). Use devices: auto, or [cpu, cpu] to train on the CPU."
            )
        if device.type not in ("cpu", "cuda"):
            raise DeviceError(f"train.devices: unsupported device {device}")
    return devices, f"devices: {[str(d) for d in devices]} (as configured)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or device.type


def synchronized_elapsed(started: float, devices) -> float:
    """Seconds since ``started`` (perf_counter), once every GPU has finished its queue."""
    for device in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (the kernel's VmHWM, the figure
    a cluster's memory limit is held against)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
