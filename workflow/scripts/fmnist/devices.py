"""Which devices the stages run on: the setting train.devices resolved against what is visible."""

from __future__ import annotations

import os
import platform
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


def resolve_devices(requested: str | list[str]) -> tuple[list[torch.device], str]:
    """The stages' torch devices for the setting ("auto" or one device per stage) and a
    line saying how they were chosen; DeviceError names what cannot be used."""
    if requested == "auto":
        count = torch.cuda.device_count()
        if count >= 2:
            names, why = ["cuda:0", "cuda:1"], f"{count} GPUs visible: one per stage"
        elif count == 1:
            names, why = ["cuda:0", "cuda:0"], "one GPU visible: both stages on it"
        else:
            names, why = ["cpu", "cpu"], "no GPU visible: both stages on the CPU"
        return [torch.device(n) for n in names], f"devices: auto -> {names} ({why})"
    if len(requested) not in (1, 2):
        raise DeviceError(f"train.devices needs 1 or 2 devices, got {requested}")
    try:
        devices = [torch.device(name) for name in requested]
    except RuntimeError as err:
        raise DeviceError(f"train.devices: {err}") from None
    devices = devices * 2 if len(devices) == 1 else devices
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
