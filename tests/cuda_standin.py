"""A stand-in for the parts of torch.cuda our code calls, enforcing CUDA's rules on the CPU.

The test machines have no GPU, so code that only runs on one is checked against a fake that
is stricter than it needs to be nowhere and as strict as CUDA where our code relies on it:

* an Event belongs to the device of the stream it was first recorded on; recording it on a
  stream of another device fails (CUDA: "invalid device"), and so does
  ``elapsed_time`` between events of two devices (``cudaEventElapsedTime`` on events of two
  devices: cudaErrorInvalidResourceHandle), between an event and anything that is not an
  Event (a float), or before both events have completed (cudaErrorNotReady: the host must
  synchronize first);
* every call names a device that exists (index below the device count; a bare ``cuda`` is
  the current device);
* ``current_device`` is 0 until ``set_device``, as for a fresh CUDA context, and
  ``set_device_calls`` says when it was set (NCCL's object collectives use it).

Use it with ``fake_cuda(monkeypatch, count)``: tensors stay on the CPU; only what code asks
torch.cuda is answered by the fake.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import torch


class CudaRuleError(RuntimeError):
    """What the CUDA runtime would have answered with an error."""


@dataclass
class FakeStream:
    device: torch.device


@dataclass
class FakeProperties:
    name: str
    uuid: uuid.UUID
    total_memory: int = 80 * 2**30


@dataclass
class FakeCuda:
    count: int
    current: int = 0
    set_device_calls: list = field(default_factory=list)
    completed_up_to: dict = field(default_factory=dict)  # device index -> perf_counter time
    uuids: list = field(default_factory=list)

    def index(self, device=None) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            device = torch.device("cuda", device)
        device = torch.device(device)
        if device.type != "cuda":
            raise CudaRuleError(f"{device} is not a CUDA device")
        index = self.current if device.index is None else device.index
        if not 0 <= index < self.count:
            raise CudaRuleError(f"invalid device ordinal {index} (device count {self.count})")
        return index

    # torch.cuda's functions, as the fake answers them
    def device_count(self) -> int:
        return self.count

    def is_available(self) -> bool:
        return self.count > 0

    def current_device(self) -> int:
        return self.current

    def set_device(self, device) -> None:
        self.current = self.index(device)
        self.set_device_calls.append(self.current)

    def current_stream(self, device=None) -> FakeStream:
        return FakeStream(torch.device("cuda", self.index(device)))

    def synchronize(self, device=None) -> None:
        self.completed_up_to[self.index(device)] = time.perf_counter()

    def get_device_name(self, device=None) -> str:
        return f"Fake GPU {self.index(device)}"

    def get_device_properties(self, device=None) -> FakeProperties:
        index = self.index(device)
        return FakeProperties(f"Fake GPU {index}", self.uuids[index])

    def max_memory_allocated(self, device=None) -> int:
        return 2**20 * (1 + self.index(device))

    def reset_peak_memory_stats(self, device=None) -> None:
        self.index(device)

    def event_class(self):
        cuda = self

        class FakeEvent:
            """torch.cuda.Event with timing, checked as CUDA checks it."""

            def __init__(self, enable_timing: bool = False, **_):
                self.enable_timing = enable_timing
                self.device_index = None
                self.recorded_at = None

            def record(self, stream=None) -> None:
                stream = stream if stream is not None else cuda.current_stream()
                index = cuda.index(stream.device)
                if self.device_index is not None and self.device_index != index:
                    raise CudaRuleError(
                        f"an event of cuda:{self.device_index} recorded on a stream of cuda:{index}"
                    )
                self.device_index, self.recorded_at = index, time.perf_counter()

            def elapsed_time(self, end) -> float:
                if not isinstance(end, FakeEvent):
                    raise TypeError(f"elapsed_time of an Event and a {type(end).__name__}")
                if not (self.enable_timing and end.enable_timing):
                    raise CudaRuleError("elapsed_time of events created without timing")
                if self.recorded_at is None or end.recorded_at is None:
                    raise CudaRuleError("elapsed_time of an event never recorded")
                if self.device_index != end.device_index:
                    raise CudaRuleError(
                        f"elapsed_time between events of cuda:{self.device_index} and "
                        f"cuda:{end.device_index} (cudaErrorInvalidResourceHandle)"
                    )
                done = cuda.completed_up_to.get(self.device_index, -1.0)
                if max(self.recorded_at, end.recorded_at) > done:
                    raise CudaRuleError("elapsed_time before the events completed (NotReady)")
                return (end.recorded_at - self.recorded_at) * 1000

            def __sub__(self, other):  # what a float-minus-event mix-up would reach
                raise TypeError("unsupported operand type(s) for -: 'Event' and a number")

            __rsub__ = __sub__

        return FakeEvent


FUNCTIONS = [
    "device_count",
    "is_available",
    "current_device",
    "set_device",
    "current_stream",
    "synchronize",
    "get_device_name",
    "get_device_properties",
    "max_memory_allocated",
    "reset_peak_memory_stats",
]


def fake_cuda(monkeypatch, count: int) -> FakeCuda:
    """Answer torch.cuda's calls with a FakeCuda of ``count`` GPUs for this test."""
    cuda = FakeCuda(count, uuids=[uuid.uuid4() for _ in range(count)])
    for name in FUNCTIONS:
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    monkeypatch.setattr(torch.cuda, "Event", cuda.event_class())
    return cuda
