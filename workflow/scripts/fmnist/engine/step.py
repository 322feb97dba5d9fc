"""The training step: forward, backward and Adam on one batch.

Autograd and torch.optim.Adam are the reference, and the step wherever a stage is on a
GPU; the hand-written CPU step (kernel_step.py) is chosen by the setting train.cpu_step.
"""

from __future__ import annotations

import torch

from fmnist.engine.model import ModelParallelMLP, pipelined_backward

# torch.optim.Adam's implementations, by the names train.adam_impl gives them.
ADAM_IMPLS = {
    "for_loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_optimizer(model: ModelParallelMLP, params: dict) -> torch.optim.Adam:
    """Adam as the run's settings (train.lr, train.adam_impl) ask for it."""
    return torch.optim.Adam(model.parameters(), lr=params["lr"], **ADAM_IMPLS[params["adam_impl"]])


class AutogradStep:
    """One training step the textbook way: autograd and torch.optim.Adam.step().

    The step on GPUs; on the CPU, the reference that kernel_step.KernelStep reproduces
    bit for bit (tests/engine/test_kernel_step.py checks this) and the "before" of the benchmark.
    """

    def __init__(self, model: ModelParallelMLP, optimizer, microbatches: int):
        self.model, self.optimizer, self.microbatches = model, optimizer, microbatches
        self.timeline = None  # a fmnist.engine.timeline.Timeline while steps are being recorded

    def __call__(self, x, y, loss_out: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = pipelined_backward(self.model, x, y, self.microbatches, self.timeline)
        self.optimizer.step()
        loss_out.copy_(loss)


def is_tutorial_layout(model: ModelParallelMLP) -> bool:
    """The tutorial's two stages: Linear + log_softmax, then Linear (what KernelStep writes out)."""
    if len(model.stages) != 2 or not isinstance(model.stages[1], torch.nn.Linear):
        return False
    first = model.stages[0]
    return (
        isinstance(first, torch.nn.Sequential)
        and len(first) == 2
        and isinstance(first[0], torch.nn.Linear)
        and isinstance(first[1], torch.nn.LogSoftmax)
        and first[1].dim == 1
    )


def make_step(model: ModelParallelMLP, optimizer, batch_size: int, params: dict):
    """The kernel-level step where train.cpu_step asks for it, every stage is on the CPU
    (the only place tests can prove it bitwise equal to autograd) and the model has the
    tutorial's two-stage layout (the only one it is written for); else autograd. run.json
    records which (setup.train_step)."""
    microbatches = params["microbatches"]
    on_cpu = all(device.type == "cpu" for device in model.devices)
    if on_cpu and params["cpu_step"] == "kernels" and is_tutorial_layout(model):
        from fmnist.engine.kernel_step import KernelStep

        return KernelStep(model, optimizer, batch_size, microbatches)
    return AutogradStep(model, optimizer, microbatches)
