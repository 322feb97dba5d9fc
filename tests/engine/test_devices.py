"""Tests of fmnist/engine/devices.py: train.devices resolved against the visible GPUs."""

from __future__ import annotations

import pytest
import torch
from fmnist.engine.devices import DeviceError, resolve_devices

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("count", "expected", "why"),
    [
        (0, ["cpu", "cpu"], "no GPU visible: both stages on the CPU"),
        (1, ["cuda:0", "cuda:0"], "one GPU visible: both stages on it"),
        (3, ["cuda:0", "cuda:1"], "3 GPUs visible: one per stage"),
    ],
)
def test_auto_devices(monkeypatch, count, expected, why):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    devices, message = resolve_devices("auto")
    assert devices == [torch.device(d) for d in expected]
    assert message == f"devices: auto -> {expected} ({why})"


def test_configured_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_devices(["cpu"]) == (
        [CPU, CPU],
        "devices: ['cpu', 'cpu'] (as configured)",
    )
    assert resolve_devices(["cpu", "cuda:0"])[0] == [CPU, torch.device("cuda:0")]
    with pytest.raises(DeviceError) as error:
        resolve_devices(["cuda:0", "cuda:1"])
    assert "but cuda:1 is not visible (torch.cuda.device_count()=1, CUDA_VISIBLE_DEVICES=" in (
        str(error.value)
    )
    with pytest.raises(DeviceError) as error:
        resolve_devices(["cpu", "cpu", "cpu"])
    assert str(error.value) == (
        "train.devices needs 1 device or one per stage (2), got ['cpu', 'cpu', 'cpu']"
    )
    assert resolve_devices(["cpu"] * 3, stages=3)[0] == [CPU] * 3
    assert resolve_devices(["cpu"], stages=3)[0] == [CPU] * 3


@pytest.mark.parametrize(
    ("count", "stages", "expected", "why"),
    [
        (0, 3, ["cpu"] * 3, "no GPU visible: every stage on the CPU"),
        (1, 3, ["cuda:0"] * 3, "one GPU visible: every stage on it"),
        (2, 3, ["cuda:0", "cuda:0", "cuda:1"], "2 GPUs visible for 3 stages: neighbouring"),
        (2, 4, ["cuda:0", "cuda:0", "cuda:1", "cuda:1"], "2 GPUs visible for 4 stages"),
        (4, 3, ["cuda:0", "cuda:1", "cuda:2"], "4 GPUs visible: one per stage"),
        (0, 1, ["cpu"], "no GPU visible: every stage on the CPU"),
    ],
)
def test_auto_devices_for_n_stages(monkeypatch, count, stages, expected, why):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    devices, message = resolve_devices("auto", stages)
    assert devices == [torch.device(d) for d in expected]
    assert message.startswith(f"devices: auto -> {expected} ({why}")
