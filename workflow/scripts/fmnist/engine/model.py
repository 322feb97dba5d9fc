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
        sizes = layer_sizes({"hidden_sizes": hidden_sizes})
        layers = len(sizes) - 1
        split = list(split) if split is not None else [1] * len(devices)
        if sum(split) != layers or len(split) != len(devices) or min(split) < 1:
            raise ValueError(
                f"stage split {split} over {len(devices)} devices does not fit {layers} layers"
            )
        stages = stage_modules(sizes, split, activation)
        self.stages = nn.ModuleList([s.to(d) for s, d in zip(stages, devices)])
        self.devices = list(devices)
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for stage, device in zip(self.stages, self.devices):
            x = stage(to_stage(x, device))
        return x


SKIPPED_DRAWS_AT_ONCE = 1 << 20
"""Numbers drawn per chunk when skipping another stage's initial weights (4 MB of float32)."""


def skip_initial_draws(fan_in: int, fan_out: int) -> None:
    """Advance the generator past what nn.Linear(fan_in, fan_out) draws when it is made:
    its weight's, then its bias's uniform numbers (one 32-bit draw each, whatever the
    bounds), drawn into a small scratch buffer so that the layer is never held."""
    scratch = torch.empty(min(SKIPPED_DRAWS_AT_ONCE, fan_in * fan_out))
    for count in (fan_in * fan_out, fan_out):
        while count:
            chunk = min(count, len(scratch))
            scratch[:chunk].uniform_()
            count -= chunk


def stage_modules(
    sizes: list[int], split: list[int], activation: str, owned=None
) -> list[nn.Module | None]:
    """Each stage's module: its Linears and their activations (the last Linear has none),
    or the bare Linear when that is all it holds; None for a stage not in ``owned`` (None:
    every stage). Layers are made in order from the seed, and a stage not owned only
    advances the generator past its draws, so each owned stage gets exactly the weights it
    would have in the whole model, without the whole model ever being held."""
    layers, stages, first = len(sizes) - 1, [], 0
    for s, count in enumerate(split):
        block = []
        for j in range(first, first + count):
            if owned is not None and s not in owned:
                skip_initial_draws(sizes[j], sizes[j + 1])
                continue
            block.append(nn.Linear(sizes[j], sizes[j + 1]))
            if j < layers - 1:
                block.append(ACTIVATIONS[activation]())
        stages.append(None if not block else block[0] if len(block) == 1 else nn.Sequential(*block))
        first += count
    return stages


def layer_sizes(params: dict) -> list[int]:
    hidden = params["hidden_sizes"]
    return [INPUT_SIZE, *([hidden] if isinstance(hidden, int) else hidden), OUTPUT_SIZE]


def layer_parameters(stages: dict[int, nn.Module], split: list[int]) -> dict[str, torch.Tensor]:
    """The parameters of the stages held (stage index -> its module) under the names they
    have whatever the stage split: layers.{j}.weight and layers.{j}.bias for the model's
    j-th Linear (the names of the checkpoints, which a run may resume from with another
    split)."""
    firsts = first_layers(split)
    return {
        f"layers.{firsts[s] + k}.{name}": p
        for s, stage in stages.items()
        for k, linear in enumerate(m for m in stage.modules() if isinstance(m, nn.Linear))
        for name, p in linear.named_parameters()
    }


def first_layers(split: list[int]) -> list[int]:
    """The index of each stage's first Linear in the whole model."""
    return [sum(split[:s]) for s in range(len(split))]


def single_process_names(params: dict) -> dict[str, str]:
    """Each layer name (layers.{j}.weight) -> its name in this split's whole model
    (stages.{s}.…, model.pt's names), found on a model made without storage or draws."""
    with torch.device("meta"):
        model = model_for(params, [torch.device("meta")] * len(stage_split(params)))
    by_param = {p: name for name, p in model.named_parameters()}
    layers = layer_parameters(dict(enumerate(model.stages)), model.split)
    return {layer_name: by_param[p] for layer_name, p in layers.items()}


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
