"""The tutorial's MLP as a list of pipeline stages, stage i on devices[i].

Stage 0 is Linear(784 -> hidden) + log_softmax, stage 1 Linear(hidden -> 10): the
tutorial's SeqNet, whose activations move from device to device between the stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .idx import IMAGE_SIDE, NUM_CLASSES

INPUT_SIZE = IMAGE_SIDE * IMAGE_SIDE
OUTPUT_SIZE = NUM_CLASSES


class ModelParallelMLP(nn.Module):
    """The tutorial's SeqNet as a list of stages, stage i on devices[i]."""

    def __init__(self, hidden_size: int, devices: list[torch.device]):
        super().__init__()
        first = nn.Sequential(nn.Linear(INPUT_SIZE, hidden_size), nn.LogSoftmax(dim=1))
        second = nn.Linear(hidden_size, OUTPUT_SIZE)
        # Built on the CPU first so the initial weights do not depend on the devices.
        self.stages = nn.ModuleList([first.to(devices[0]), second.to(devices[1])])
        self.devices = list(devices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for stage, device in zip(self.stages, self.devices):
            x = stage(to_stage(x, device))
        return x


def to_stage(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move activations to a stage's device. Non-blocking only towards a GPU: a
    non-blocking copy to the CPU could be read before it has arrived."""
    return x.to(device, non_blocking=device.type == "cuda")


def pipelined_loss(model: ModelParallelMLP, x, y, microbatches: int) -> torch.Tensor:
    """Mean cross-entropy of the batch, computed GPipe-style over micro-batches.

    At tick t stage s works on chunk t - s, so stage 0 already computes chunk i+1
    while stage 1 computes chunk i; on GPUs both devices' queues stay busy.
    With one micro-batch this is exactly the tutorial's schedule and loss.
    """
    if microbatches == 1:
        return F.cross_entropy(model(x), y)
    activations = list(torch.flatten(x, 1).chunk(microbatches))
    stages = len(model.stages)
    for tick in range(len(activations) + stages - 1):
        for s in range(stages):
            i = tick - s
            if 0 <= i < len(activations):
                h = to_stage(activations[i], model.devices[s])
                activations[i] = model.stages[s](h)
    total = sum(
        F.cross_entropy(out, target, reduction="sum")
        for out, target in zip(activations, y.chunk(len(activations)))
    )
    return total / x.shape[0]
