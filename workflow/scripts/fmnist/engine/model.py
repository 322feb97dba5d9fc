"""The tutorial's MLP, generalised to N stages: stage i on devices[i].

The layers are Linear(784 -> h1), ..., Linear(hk -> 10), with the activation after every
Linear but the last; stage i holds a contiguous block of them (train.stage_split,
fmnist.config.stages.stage_split). With the defaults (hidden_sizes [200], log_softmax, two
stages) this is the tutorial's SeqNet: Linear(784 -> 200) + log_softmax, then
Linear(200 -> 10), whose activations move from device to device between the stages.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.config.stages import stage_split
from fmnist.data.idx import IMAGE_SIDE, NUM_CLASSES

INPUT_SIZE = IMAGE_SIDE * IMAGE_SIDE
OUTPUT_SIZE = NUM_CLASSES
ACTIVATIONS = {"log_softmax": lambda: nn.LogSoftmax(dim=1), "relu": nn.ReLU}


class ModelParallelMLP(nn.Module):
    """The MLP as a list of stages, stage i on devices[i].

    ``hidden_sizes`` is the width of each hidden layer, ``split`` the number of layers of
    each stage (default: one stage per layer). A stage is an nn.Sequential of its Linears
    and activations, or the bare Linear when that is all it holds, so the tutorial's model
    keeps its parameter names (stages.0.0.weight, stages.0.0.bias, stages.1.weight,
    stages.1.bias). The layers are made in order, on the CPU, before any moves to a device:
    the initial weights depend on the seed alone, not on the split or the devices.
    """

    def __init__(
        self,
        hidden_sizes: int | list[int],
        devices: list[torch.device],
        split: list[int] | None = None,
        activation: str = "log_softmax",
    ):
        super().__init__()
        if isinstance(hidden_sizes, int):
            hidden_sizes = [hidden_sizes]
        sizes = [INPUT_SIZE, *hidden_sizes, OUTPUT_SIZE]
        layers = len(sizes) - 1
        split = list(split) if split is not None else [1] * len(devices)
        if sum(split) != layers or len(split) != len(devices) or min(split) < 1:
            raise ValueError(
                f"stage split {split} over {len(devices)} devices does not fit {layers} layers"
            )
        modules = []
        for i in range(layers):
            modules.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < layers - 1:
                modules.append(ACTIVATIONS[activation]())
        stages, start = [], 0
        for count in split:
            end = start + 2 * count  # each layer is a Linear and its activation ...
            block = modules[start : min(end, len(modules))]  # ... but the last has none
            stages.append(block[0] if len(block) == 1 else nn.Sequential(*block))
            start = end
        self.stages = nn.ModuleList([s.to(d) for s, d in zip(stages, devices)])
        self.devices = list(devices)
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for stage, device in zip(self.stages, self.devices):
            x = stage(to_stage(x, device))
        return x


def model_for(params: dict, devices: list[torch.device]) -> ModelParallelMLP:
    """The run's model (train.hidden_sizes, train.activation, train.stage_split)."""
    return ModelParallelMLP(
        params["hidden_sizes"], devices, stage_split(params), params["activation"]
    )


def to_stage(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move activations to a stage's device. Non-blocking only towards a GPU: a
    non-blocking copy to the CPU could be read before it has arrived."""
    return x.to(device, non_blocking=device.type == "cuda")


def microbatch_loss(out: torch.Tensor, target: torch.Tensor, rows: int, microbatches: int):
    """What one micro-batch adds to the loss of a batch of ``rows`` rows.

    One micro-batch: the tutorial's mean cross-entropy. Several: the micro-batch's summed
    cross-entropy divided by the batch's rows, so that the micro-batches' losses, and their
    gradients, add up to the batch mean whatever their sizes. Both engines use it (the
    distributed one as its schedules' loss_fn, with their gradient scaling off), and both
    run the backward passes one micro-batch at a time in order: the same arithmetic, so the
    same bits.
    """
    if microbatches == 1:
        return F.cross_entropy(out, target)
    return F.cross_entropy(out, target, reduction="sum") / rows


def pipelined_backward(model: ModelParallelMLP, x, y, microbatches: int, timeline=None):
    """Forward and backward passes of a batch, GPipe-style over micro-batches; its loss.

    At tick t stage s works on chunk t - s, so stage 0 already computes chunk i+1 while
    stage 1 computes chunk i; on GPUs both devices' queues stay busy. The backward passes
    then run chunk by chunk in order, as torch.distributed.pipelining runs them, so the
    gradients accumulate in the same order. With one micro-batch this is exactly the
    tutorial's step and loss. ``timeline`` (fmnist.engine.timeline.Timeline) records when each
    stage worked on each chunk.
    """
    chunks = list(torch.flatten(x, 1).chunk(microbatches))
    stages = len(model.stages)
    outputs = [[] for _ in chunks]  # per chunk, each stage's output
    for tick in range(len(chunks) + stages - 1):
        for s in range(stages):
            i = tick - s
            if 0 <= i < len(chunks):
                h = to_stage(chunks[i] if s == 0 else outputs[i][-1], model.devices[s])
                with timeline.span(s, i, "forward") if timeline else nullcontext():
                    outputs[i].append(model.stages[s](h))
    total = 0
    for i, (out, target) in enumerate(zip(outputs, y.chunk(len(chunks)))):
        loss = microbatch_loss(out[-1], target, x.shape[0], microbatches)
        if timeline:
            timeline.backward(loss, out, i)
        else:
            loss.backward()
        total = total + loss.detach()
    return total
