#!/usr/bin/env python3
"""Train the tutorial's MLP on FashionMNIST with its two layers on two devices.

Stage i of the model (Linear 784->hidden + log_softmax, then Linear hidden->10)
lives on devices[i]; activations move between the stages. Writes, into --out-dir:
epochs.csv (one row per epoch, flushed as it goes), run.json (provenance) and
model.pt (final weights). A checkpoint (checkpoint.pt) is written after every
epoch and whenever the run is told to stop (SIGTERM/SIGINT/SIGURG, or the SLURM
deadline drawing near); a restarted run resumes from it and ends with exactly the
metrics of an uninterrupted run.

Exit codes: 0 done; 2 bad arguments or devices; 75 stopped early with a
checkpoint saved (run again to resume); 1 anything else, e.g. a non-finite loss.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# cuBLAS reads this when CUDA initialises; it must be set before torch touches a GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import FILE_NAMES, load_split, md5sum  # noqa: E402

INPUT_SIZE = 28 * 28
OUTPUT_SIZE = 10
EVAL_CHUNK = 1000
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: "try again", and the next try resumes
METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "epoch_seconds",
    "samples_per_second",
]
ADAM_IMPLS = {
    "for_loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
REPO_ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(message, flush=True)


def fail(message: str):
    """Exit with status 2 and a message that names what is wrong."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# --------------------------------------------------------------------------- model


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


# ------------------------------------------------------------------ training step

# at::Reduction codes, as F.cross_entropy passes them to nll_loss.
REDUCTION_MEAN, REDUCTION_SUM = 1, 2
IGNORE_INDEX = -100


class AutogradStep:
    """One training step the textbook way: autograd and torch.optim.Adam.step().

    The step on GPUs; on the CPU, the reference that TrainStep reproduces bit for
    bit (tests/test_benchmark.py checks this) and the "before" of the benchmark.
    """

    def __init__(self, model: ModelParallelMLP, optimizer, microbatches: int):
        self.model, self.optimizer, self.microbatches = model, optimizer, microbatches

    def __call__(self, x, y, loss_out: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = pipelined_loss(self.model, x, y, self.microbatches)
        loss.backward()
        self.optimizer.step()
        loss_out.copy_(loss.detach())


def make_step(model: ModelParallelMLP, optimizer, batch_size: int, microbatches: int):
    """TrainStep where every stage is on the CPU, the only place tests can prove it
    bitwise equal to autograd; autograd itself as soon as a stage is on a GPU."""
    if all(device.type == "cpu" for device in model.devices):
        return TrainStep(model, optimizer, batch_size, microbatches)
    return AutogradStep(model, optimizer, microbatches)


class _Chunk:
    """One micro-batch: rows [start, end) of the batch, and views of the step's buffers."""

    def __init__(self, start: int, end: int, buffers: dict):
        self.rows = slice(start, end)
        for name, buffer in buffers.items():
            setattr(self, name, buffer[start:end])
        self.g_logits_t, self.g_h_t = self.g_logits.t(), self.g_h.t()


class TrainStep:
    """One training step (forward, backward, Adam) written out kernel by kernel.

    It computes exactly what ``AutogradStep`` computes: the forward and backward
    passes call the ATen kernels that autograd calls for this model (addmm,
    _log_softmax, nll_loss and the backward formulas of derivatives.yaml, with the
    same operand layouts), micro-batch gradients are summed in the order in which
    the autograd engine sums them, and AdamUpdate performs torch.optim.Adam's
    operations. What it drops is overhead: no autograd graph, no allocation per
    batch (every intermediate and gradient is written with out= into buffers made
    once), no zero_grad (gradients are overwritten, not accumulated), no per-call
    optimizer bookkeeping, no host synchronisation.
    """

    def __init__(self, model: ModelParallelMLP, optimizer, batch_size: int, microbatches: int):
        self.model, self.microbatches = model, microbatches
        (lin1, _), lin2 = model.stages
        self.params = [lin1.weight, lin1.bias, lin2.weight, lin2.bias]
        self.w1, self.b1, self.w2, self.b2 = self.params
        with torch.no_grad():  # F.linear runs addmm(bias, x, weight.t()); views stay current
            self.w1t, self.w2t = self.w1.t(), self.w2.t()
        # Gradients are written into these (they are the parameters' .grad); with
        # micro-batches, each further chunk's gradient goes to `partial` and is added.
        self.grads = {p: torch.zeros_like(p) for p in self.params}
        self.partial = {p: torch.empty_like(p) for p in self.params}
        self.attach_grads()
        self.adam = AdamUpdate(optimizer)

        d0, d1 = model.devices
        hidden = lin1.out_features

        def buffer(columns, device):
            return torch.empty((batch_size, columns), dtype=torch.float32, device=device)

        self.buffers = {
            "h": buffer(hidden, d0),  # x W1^T + b1
            "a": buffer(hidden, d0),  # stage 0's output, log_softmax(h)
            "logits": buffer(OUTPUT_SIZE, d1),
            "logp": buffer(OUTPUT_SIZE, d1),  # cross_entropy's log_softmax
            "g_logp": buffer(OUTPUT_SIZE, d1),
            "g_logits": buffer(OUTPUT_SIZE, d1),
            "g_a1": buffer(hidden, d1),
            "g_h": buffer(hidden, d0),
        }
        # On one device the activation and its gradient "move" to themselves, as .to() does.
        self.buffers["a1"] = self.buffers["a"] if d0 == d1 else buffer(hidden, d1)
        self.buffers["g_a"] = self.buffers["g_a1"] if d0 == d1 else buffer(hidden, d0)
        self.total_weight = torch.empty(microbatches, dtype=torch.float32, device=d1)
        self.chunk_losses = torch.empty(microbatches, dtype=torch.float32, device=d1)
        self.plans: dict[int, tuple] = {}

    def attach_grads(self) -> None:
        for p, grad in self.grads.items():
            if p.grad is not grad:
                p.grad = grad

    def plan(self, rows: int) -> tuple:
        """The micro-batches of a batch of ``rows`` rows, split as Tensor.chunk splits."""
        if rows not in self.plans:
            size = -(-rows // self.microbatches)
            chunks = []
            for i, start in enumerate(range(0, rows, size)):
                chunk = _Chunk(start, min(start + size, rows), self.buffers)
                chunk.total_weight, chunk.loss = self.total_weight[i], self.chunk_losses[i]
                chunks.append(chunk)
            one = torch.ones((), device=self.model.devices[1])
            if self.microbatches == 1:  # F.cross_entropy(out, y): the mean; backward from 1
                self.plans[rows] = (chunks, one, REDUCTION_MEAN)
            else:  # sum of the chunks' summed losses / rows: d loss / d chunk sum = 1 / rows
                self.plans[rows] = (chunks, one / rows, REDUCTION_SUM)
        return self.plans[rows]

    def __call__(self, x, y, loss_out: torch.Tensor) -> None:
        """Train on the batch (x, y); its loss is written into the 0-dim ``loss_out``."""
        chunks, seed, reduction = self.plan(x.shape[0])
        self.attach_grads()
        with torch.no_grad():
            if self.microbatches == 1:
                (chunk,) = chunks
                self.forward_stage0(chunk, x)
                self.forward_stage1(chunk, y, reduction, loss_out)
                self.backward_stage1(chunk, y, seed, reduction, first=True)
                self.backward_stage0(chunk, x, first=True)
            else:
                self.pipelined(chunks, x, y, seed, reduction, loss_out)
        self.adam()

    def pipelined(self, chunks, x, y, seed, reduction, loss_out) -> None:
        """GPipe: at tick t stage s works on chunk t - s; the backward pass in reverse."""
        n = len(chunks)
        xs = [x[c.rows] for c in chunks]
        ys = [y[c.rows] for c in chunks]
        for tick in range(n + 1):  # the order of pipelined_loss
            if tick < n:
                self.forward_stage0(chunks[tick], xs[tick])
            if tick > 0:
                c = chunks[tick - 1]
                self.forward_stage1(c, ys[tick - 1], reduction, c.loss)
        # The autograd engine runs the nodes made last first: it starts at the last chunk.
        for tick in range(n + 1):
            if tick < n:
                i = n - 1 - tick
                self.backward_stage1(chunks[i], ys[i], seed, reduction, first=tick == 0)
            if tick > 0:
                i = n - tick
                self.backward_stage0(chunks[i], xs[i], first=tick == 1)
        # pipelined_loss: (0 + loss_0 + loss_1 + ...) / rows
        loss_out.copy_(chunks[0].loss)
        for chunk in chunks[1:]:
            loss_out.add_(chunk.loss)
        loss_out.div_(x.shape[0])

    def forward_stage0(self, c: _Chunk, x) -> None:
        torch.addmm(self.b1, x, self.w1t, out=c.h)
        torch._log_softmax(c.h, 1, False, out=c.a)
        if c.a1 is not c.a:
            c.a1.copy_(c.a, non_blocking=c.a1.is_cuda)

    def forward_stage1(self, c: _Chunk, y, reduction: int, loss) -> None:
        torch.addmm(self.b2, c.a1, self.w2t, out=c.logits)
        torch._log_softmax(c.logits, 1, False, out=c.logp)
        torch.ops.aten.nll_loss_forward.output(
            c.logp, y, None, reduction, IGNORE_INDEX, output=loss, total_weight=c.total_weight
        )

    def backward_stage1(self, c: _Chunk, y, seed, reduction: int, first: bool) -> None:
        torch.ops.aten.nll_loss_backward.grad_input(
            seed, c.logp, y, None, reduction, IGNORE_INDEX, c.total_weight, grad_input=c.g_logp
        )
        torch._log_softmax_backward_data(c.g_logp, c.logp, 1, torch.float32, out=c.g_logits)
        # addmm's backward: weight.t() is column-major, so mm_mat2_backward computes
        # grad.t() @ input; the bias was broadcast over the rows: its gradient is the
        # column sum (sum_to).
        target = self.grads if first else self.partial
        torch.mm(c.g_logits_t, c.a1, out=target[self.w2])
        torch.sum(c.g_logits, 0, out=target[self.b2])
        if not first:
            self.grads[self.w2].add_(self.partial[self.w2])
            self.grads[self.b2].add_(self.partial[self.b2])
        # mm_mat1_backward: grad @ weight, unless the input is column-major (only a
        # 1 x 1 activation is: hidden size 1 and a one-row chunk).
        if c.a1.stride(0) == 1 and c.a1.stride(1) == c.a1.shape[0]:
            c.g_a1.copy_(self.w2t.mm(c.g_logits_t).t())
        else:
            torch.mm(c.g_logits, self.w2, out=c.g_a1)
        if c.g_a is not c.g_a1:
            c.g_a.copy_(c.g_a1, non_blocking=c.g_a.is_cuda)

    def backward_stage0(self, c: _Chunk, x, first: bool) -> None:
        torch._log_softmax_backward_data(c.g_a, c.a, 1, torch.float32, out=c.g_h)
        target = self.grads if first else self.partial
        torch.mm(c.g_h_t, x, out=target[self.w1])
        torch.sum(c.g_h, 0, out=target[self.b1])
        if not first:
            self.grads[self.w1].add_(self.partial[self.w1])
            self.grads[self.b1].add_(self.partial[self.b1])


class _AdamTensors:
    """The parameters on one device and their Adam state (the optimizer's tensors)."""

    def __init__(self, kind: str):
        self.kind = kind  # "fused", "cpu" (for_loop/foreach) or "single" (for_loop)
        self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.steps = [], [], [], [], []
        self.denoms: list[torch.Tensor] = []
        self.one = torch.ones((), dtype=torch.float32)

    def add(self, p: torch.Tensor, state: dict) -> None:
        self.params.append(p)
        self.grads.append(p.grad)
        self.exp_avgs.append(state["exp_avg"])
        self.exp_avg_sqs.append(state["exp_avg_sq"])
        self.steps.append(state["step"])
        self.denoms.append(torch.empty_like(p))


class AdamUpdate:
    """optimizer.step() for Adam, minus its per-call Python bookkeeping.

    Performs the operations of torch.optim.Adam's own implementation for the
    optimizer's setting, on the optimizer's own state (so checkpoints are
    unchanged). fused calls the same torch._fused_adam_ kernel as _fused_adam.
    for_loop is _single_tensor_adam with its denominator written into a buffer
    instead of a fresh tensor; on the CPU each of its operations is issued for all
    tensors at once with a _foreach op (on the CPU these have no fused kernels: they
    loop over the same per-tensor kernels; that is also why torch's foreach Adam is
    the for_loop arithmetic there, and the foreach setting takes this path on the
    CPU). Anything else (the first step, which creates the state; foreach off the
    CPU; options this model does not use) goes to optimizer.step().
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.seen_state = None  # the optimizer.state dict the groups below were made for
        self.groups: list[_AdamTensors] = []

    def __call__(self) -> None:
        if self.optimizer.state is not self.seen_state and not self.refresh():
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        with torch.no_grad():
            for g in self.groups:
                if g.kind == "fused":
                    self.fused(g, lr, beta1, beta2, eps)
                elif g.kind == "cpu":
                    self.single_tensor_cpu(g, lr, beta1, beta2, eps)
                else:
                    self.single_tensor(g, lr, beta1, beta2, eps)

    def refresh(self) -> bool:
        """Collect the state tensors by device; False if this path does not apply."""
        opt = self.optimizer
        if len(opt.param_groups) != 1:
            return False
        group = opt.param_groups[0]
        params = group["params"]
        plain = (
            group["weight_decay"] == 0
            and not group["amsgrad"]
            and not group["maximize"]
            and not group["capturable"]
            and not group["differentiable"]
            and not group.get("decoupled_weight_decay", False)
            and isinstance(group["lr"], float)
            and all(p.grad is not None and p in opt.state and opt.state[p] for p in params)
        )
        if not plain or (group["foreach"] and any(p.device.type != "cpu" for p in params)):
            return False
        by_device: dict = {}
        for p in params:
            kind = "fused" if group["fused"] else "cpu" if p.device.type == "cpu" else "single"
            by_device.setdefault(p.device, _AdamTensors(kind)).add(p, opt.state[p])
        self.groups = list(by_device.values())
        self.seen_state = opt.state
        return True

    @staticmethod
    def fused(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float) -> None:
        """torch.optim.adam._fused_adam."""
        torch._foreach_add_(g.steps, 1)
        torch._fused_adam_(
            g.params,
            g.grads,
            g.exp_avgs,
            g.exp_avg_sqs,
            [],
            g.steps,
            amsgrad=False,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    @staticmethod
    def single_tensor(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float) -> None:
        """torch.optim.adam._single_tensor_adam."""
        for param, grad, exp_avg, exp_avg_sq, step_t, denom in zip(
            g.params, g.grads, g.exp_avgs, g.exp_avg_sqs, g.steps, g.denoms
        ):
            step_t += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    @staticmethod
    def single_tensor_cpu(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float):
        """_single_tensor_adam's operations, each one for all the tensors at once."""
        torch._foreach_add_(g.steps, g.one, alpha=1.0)  # step_t += 1
        torch._foreach_lerp_(g.exp_avgs, g.grads, 1 - beta1)
        torch._foreach_mul_(g.exp_avg_sqs, beta2)
        torch._foreach_addcmul_(g.exp_avg_sqs, g.grads, g.grads, 1 - beta2)
        steps = [step_t.item() for step_t in g.steps]
        for exp_avg_sq, denom in zip(g.exp_avg_sqs, g.denoms):
            torch.sqrt(exp_avg_sq, out=denom)
        torch._foreach_div_(g.denoms, [(1 - beta2**step) ** 0.5 for step in steps])
        torch._foreach_add_(g.denoms, eps)
        step_sizes = [-(lr / (1 - beta1**step)) for step in steps]
        torch._foreach_addcdiv_(g.params, g.exp_avgs, g.denoms, step_sizes)


# ------------------------------------------------------------------------- devices


def visible_cuda() -> str:
    return (
        f"torch.cuda.device_count()={torch.cuda.device_count()}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}"
    )


def resolve_devices(requested: list[str]) -> tuple[list[torch.device], str]:
    """Turn the devices setting into two torch devices, or exit naming the problem."""
    if requested == ["auto"]:
        count = torch.cuda.device_count()
        if count >= 2:
            names, why = ["cuda:0", "cuda:1"], f"{count} GPUs visible: one per stage"
        elif count == 1:
            names, why = ["cuda:0", "cuda:0"], "one GPU visible: both stages on it"
        else:
            names, why = ["cpu", "cpu"], "no GPU visible: both stages on the CPU"
        return [torch.device(n) for n in names], f"devices: auto -> {names} ({why})"
    if len(requested) not in (1, 2):
        fail(f"train.devices needs 1 or 2 devices, got {requested}")
    try:
        devices = [torch.device(name) for name in requested]
    except RuntimeError as err:
        fail(f"train.devices: {err}")
    devices = devices * 2 if len(devices) == 1 else devices
    for device in devices:
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            fail(
                f"train.devices requests {requested} but {device} is not visible "
                f"({visible_cuda()}). Use devices: auto, or [cpu, cpu] to train on the CPU."
            )
        if device.type not in ("cpu", "cuda"):
            fail(f"train.devices: unsupported device {device}")
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


# --------------------------------------------------------------------------- data


class DeviceData:
    """A split held once as uint8 on the device that consumes it."""

    def __init__(self, data_dir: Path, split: str, image_device, label_device):
        images, labels = load_split(data_dir, split)
        self.images = torch.from_numpy(images.reshape(len(images), -1).copy()).to(image_device)
        self.labels = torch.from_numpy(labels.astype("int64")).to(label_device)

    def __len__(self) -> int:
        return len(self.labels)


class BatchMaker:
    """Gathers batches by index into preallocated buffers and scales them like ToTensor."""

    def __init__(self, data: DeviceData, batch_size: int, double_scaling: bool):
        self.data = data
        self.double_scaling = double_scaling
        self.raw = torch.empty(
            (batch_size, INPUT_SIZE), dtype=torch.uint8, device=data.images.device
        )
        self.scaled = torch.empty(
            (batch_size, INPUT_SIZE), dtype=torch.float32, device=data.images.device
        )
        self.targets = torch.empty(batch_size, dtype=torch.int64, device=data.labels.device)
        self.views: dict[int, tuple] = {}

    def __call__(self, image_index, label_index):
        n = len(image_index)
        if n not in self.views:
            self.views[n] = (self.raw[:n], self.scaled[:n], self.targets[:n])
        raw, scaled, targets = self.views[n]
        torch.index_select(self.data.images, 0, image_index, out=raw)
        scaled.copy_(raw).div_(255.0)  # what ToTensor does to a uint8 image
        if self.double_scaling:
            scaled.div_(255.0)  # the tutorial's second division
        torch.index_select(self.data.labels, 0, label_index, out=targets)
        return scaled, targets


# ------------------------------------------------------------------ checkpointing


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def cpu_state(state):
    """A copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return state


def fingerprint(params: dict, devices: list[torch.device], data_md5: dict) -> str:
    """What a checkpoint must match to be resumed exactly.

    Anything that changes the numbers: settings, data, this script, the devices and
    what they are (a retried job may land on another node type), the kernels' library
    versions and CPU instruction set, and the thread count (it changes how CPU matmuls sum).
    """
    key = {
        "params": params,
        "data": data_md5,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "devices": [str(d) for d in devices],
        "device_names": [device_name(d) for d in devices],
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: Path, expected_fingerprint: str):
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged checkpoint must not block a fresh start
        log(f"checkpoint {path} is unreadable ({err}); starting from scratch")
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log(f"checkpoint {path} belongs to other settings or data; starting from scratch")
        return None
    return state


# ----------------------------------------------------------------- stop requests


class StopWatch:
    """Says when to stop early: on SIGTERM/SIGINT, or when the SLURM deadline is near.

    The deadline comes from squeue. SLURM's warning signal (SIGURG, `--signal=URG@N`)
    can arrive up to ~60 s before it is due, so while the end time is known it only
    makes us read the end time again (an admin may have changed the limit); without
    a known end time it means stop.
    """

    def __init__(self, margin_seconds: float):
        self.margin = margin_seconds
        self.reason = None
        self.deadline = None
        self.recheck = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGURG):
            signal.signal(sig, self._on_signal)
        self._read_deadline(first=True)

    def _read_deadline(self, first: bool = False) -> None:
        end = slurm_end_time()
        if end is None:
            return
        left = end - time.time()
        margin = self.margin
        if left <= margin and first:
            # Still make progress: the margin must leave room for work.
            log(f"only {left:.0f} s left, below the {margin:.0f} s margin: using half")
            margin = self.margin = left / 2
        self.deadline = end - margin
        log(f"SLURM time limit in {left:.0f} s; will stop {margin:.0f} s before it")

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGURG and self.deadline is not None:
            self.recheck = True  # squeue is not called from a signal handler
        else:
            self.reason = f"received {signal.Signals(signum).name}"

    def should_stop(self) -> bool:
        if self.recheck:
            self.recheck = False
            self._read_deadline()
        if self.reason is None and self.deadline is not None and time.time() >= self.deadline:
            self._read_deadline()  # once more: the limit may have been extended meanwhile
            if time.time() >= self.deadline:
                self.reason = "the SLURM time limit is near"
        return self.reason is not None


def slurm_end_time():
    """The job's end time (epoch seconds) from squeue, or None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return dt.datetime.fromisoformat(out).timestamp()  # local time, like SLURM prints it
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        log(f"could not read the SLURM end time ({err}); relying on signals")
        return None


# ------------------------------------------------------------------- provenance


def git_state() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30
        )

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_record() -> dict:
    slurm = None
    if os.environ.get("SLURM_JOB_ID"):
        slurm = {
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "partition": os.environ.get("SLURM_JOB_PARTITION"),
            "node": os.environ.get("SLURMD_NODENAME"),
            "account": os.environ.get("SLURM_JOB_ACCOUNT"),
            "gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_GPUS"),
        }
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "hostname": socket.gethostname(),
        "slurm": slurm,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only
            "torchvision": package_version("torchvision"),
            "snakemake": package_version("snakemake"),
            "numpy": package_version("numpy"),
            "cuda": torch.version.cuda,
            "cudnn": cudnn,
        },
    }


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------- training


class Trainer:
    def __init__(self, args, devices: list[torch.device]):
        self.args = args
        self.devices = devices
        self.out_dir: Path = args.out_dir
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        for stale in self.out_dir.glob(".*.tmp-*"):  # left by a kill mid-write
            stale.unlink()
        self.data_md5 = {name: md5sum(args.data_dir / name) for name in FILE_NAMES}
        self.params = run_params(args)
        self.fingerprint = fingerprint(self.params, devices, self.data_md5)
        self.train = DeviceData(args.data_dir, "train", devices[0], devices[-1])
        self.test = DeviceData(args.data_dir, "test", devices[0], devices[-1])
        self.batches = BatchMaker(self.train, args.batch_size, args.tutorial_double_scaling)
        self.num_batches = math.ceil(len(self.train) / args.batch_size)

        torch.manual_seed(args.seed)
        self.model = ModelParallelMLP(args.hidden_size, devices)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=args.lr, **ADAM_IMPLS[args.adam_impl]
        )
        self.step = make_step(self.model, self.optimizer, args.batch_size, args.microbatches)
        self.shuffle = torch.Generator().manual_seed(args.seed)
        self.history: list[dict] = []
        self.attempts: list[dict] = []
        # Where the current epoch stands: its order, losses so far, time spent.
        self.epoch = 0
        self.order = None
        self.batch_losses = torch.zeros(self.num_batches, dtype=torch.float32, device=devices[-1])
        self.batches_done = 0
        self.epoch_seconds_so_far = 0.0

    # -- checkpoint state --------------------------------------------------
    def state(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "model": cpu_state(self.model.state_dict()),
            "optimizer": cpu_state(self.optimizer.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "epoch": self.epoch,
            "order": None if self.order is None else self.order.cpu(),
            "batch_losses": self.batch_losses.cpu(),
            "batches_done": self.batches_done,
            "epoch_seconds_so_far": self.epoch_seconds_so_far,
            "history": self.history,
            "attempts": self.attempts,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.epoch = state["epoch"]
        self.order = state["order"]
        self.batch_losses.copy_(state["batch_losses"])
        self.batches_done = state["batches_done"]
        self.epoch_seconds_so_far = state["epoch_seconds_so_far"]
        self.history = list(state["history"])
        self.attempts = list(state["attempts"])

    def save_checkpoint(self) -> None:
        state = self.state()
        atomic_write_bytes(self.checkpoint_path, lambda handle: torch.save(state, handle))

    # -- epochs ------------------------------------------------------------
    def run_epoch_batches(self, stop: StopWatch) -> bool:
        """Train the rest of the current epoch; False if asked to stop first."""
        if self.order is None:
            self.order = torch.randperm(len(self.train), generator=self.shuffle)
        size = self.args.batch_size
        image_batches = self.order.to(self.devices[0]).split(size)
        label_batches = self.order.to(self.devices[-1]).split(size)
        losses = self.batch_losses.unbind()  # each step writes its loss into its slot
        step, batches = self.step, self.batches
        self.model.train()
        started = time.perf_counter()
        for b in range(self.batches_done, self.num_batches):
            if stop.should_stop():
                self.batches_done = b
                self.epoch_seconds_so_far += synchronized_elapsed(started, self.devices)
                return False
            step(*batches(image_batches[b], label_batches[b]), losses[b])  # no host sync
        self.batches_done = self.num_batches
        self.epoch_seconds_so_far += synchronized_elapsed(started, self.devices)
        return True

    def check_finite(self) -> None:
        finite = torch.isfinite(self.batch_losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise RuntimeError(
                f"non-finite training loss ({self.batch_losses[bad].item()}) at epoch "
                f"{self.epoch + 1}, batch {bad + 1} of {self.num_batches}; "
                "try a smaller train.lr or check the data"
            )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(self.test), EVAL_CHUNK):
            images = self.test.images[start : start + EVAL_CHUNK].to(torch.float32).div_(255.0)
            if self.args.tutorial_double_scaling:
                images.div_(255.0)
            labels = self.test.labels[start : start + EVAL_CHUNK]
            out = self.model(images)
            loss_sum += F.cross_entropy(out, labels, reduction="sum").item()
            correct += int((out.argmax(dim=1) == labels).sum())
        return loss_sum / len(self.test), correct / len(self.test)

    def finish_epoch(self) -> dict:
        self.check_finite()
        # The tutorial sums Python floats batch by batch, then divides.
        train_loss = sum(self.batch_losses.tolist()) / self.num_batches
        test_loss, test_accuracy = self.evaluate()
        seconds = self.epoch_seconds_so_far
        row = {
            "epoch": self.epoch + 1,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "epoch_seconds": seconds,
            "samples_per_second": len(self.train) / seconds,
        }
        for device in sorted({d for d in self.devices if d.type == "cuda"}, key=str):
            row[f"peak_memory_mb_cuda{device.index or 0}"] = (
                torch.cuda.max_memory_allocated(device) / 2**20
            )
            torch.cuda.reset_peak_memory_stats(device)
        self.history.append(row)
        self.epoch += 1
        self.order, self.batches_done, self.epoch_seconds_so_far = None, 0, 0.0
        self.batch_losses.zero_()
        return row


def synchronized_elapsed(started: float, devices) -> float:
    for device in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def log_epoch(row: dict, epochs: int) -> None:
    log(f"Epoch [{row['epoch']}/{epochs}], Loss: {row['train_loss']:.4f}")
    log(
        f"    test_loss {row['test_loss']:.4f}  test_accuracy {100 * row['test_accuracy']:.2f}%  "
        f"{row['epoch_seconds']:.2f} s  {row['samples_per_second']:.0f} samples/s"
    )


class EpochTable:
    """epochs.csv: rewritten from the history on (re)start, then appended per epoch."""

    def __init__(self, path: Path, history: list[dict]):
        self.path = path
        self.has_header = bool(history)
        text = self._header(history[0]) + "".join(map(self._line, history)) if history else ""
        atomic_write_text(path, text)

    @staticmethod
    def _header(row: dict) -> str:
        return ",".join(row) + "\n"

    @staticmethod
    def _line(row: dict) -> str:
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in row.values()) + "\n"

    def append(self, row: dict) -> None:
        with open(self.path, "a") as handle:
            if not self.has_header:
                self.has_header = True
                handle.write(self._header(row))
            handle.write(self._line(row))
            handle.flush()
            os.fsync(handle.fileno())


def run_params(args) -> dict:
    return {
        "devices": args.devices,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "hidden_size": args.hidden_size,
        "seed": args.seed,
        "tutorial_double_scaling": args.tutorial_double_scaling,
        "microbatches": args.microbatches,
        "adam_impl": args.adam_impl,
    }


def configure_determinism(threads: int) -> None:
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)


def train(args) -> int:
    started = now()
    configure_determinism(args.threads)
    devices, why = resolve_devices(args.devices)
    log(why)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, devices)
    state = load_checkpoint(trainer.checkpoint_path, trainer.fingerprint)
    if state is not None:
        trainer.restore(state)
        position = f"epoch {trainer.epoch + 1}, batch {trainer.batches_done + 1}"
        log(f"resuming from {trainer.checkpoint_path}: {position}")
    attempt = {
        "started": started,
        "start_epoch": trainer.epoch + 1,
        "device_names": [device_name(d) for d in devices],
        **environment_record(),
    }
    trainer.attempts.append(attempt)
    table = EpochTable(args.out_dir / "epochs.csv", trainer.history)
    for row in trainer.history:
        log_epoch(row, args.epochs)
    stop = StopWatch(args.deadline_margin)
    while trainer.epoch < args.epochs:
        if not trainer.run_epoch_batches(stop):
            attempt.update(finished=now(), stopped=stop.reason)
            trainer.save_checkpoint()
            log(
                f"stopping early: {stop.reason}. Checkpoint saved at epoch {trainer.epoch + 1}, "
                f"batch {trainer.batches_done + 1}; run again to resume (exit {EXIT_RESUMABLE})"
            )
            return EXIT_RESUMABLE
        row = trainer.finish_epoch()
        table.append(row)
        log_epoch(row, args.epochs)
        trainer.save_checkpoint()
    log("Training finished.")
    attempt["finished"] = now()
    write_outputs(args, trainer, devices)
    trainer.checkpoint_path.unlink(missing_ok=True)
    return 0


def write_outputs(args, trainer: Trainer, devices) -> None:
    weights = cpu_state(trainer.model.state_dict())
    atomic_write_bytes(args.out_dir / "model.pt", lambda handle: torch.save(weights, handle))
    current = trainer.attempts[-1]
    record = {
        "run_id": args.run_id or args.out_dir.name,
        "params": trainer.params,
        "swept": args.swept,
        "config": {
            **trainer.params,
            "devices_resolved": [str(d) for d in devices],
            "data_dir": str(args.data_dir),
            "threads": torch.get_num_threads(),
            "train_step": type(trainer.step).__name__,
            "deadline_margin_seconds": args.deadline_margin,
        },
        "seed": args.seed,
        "devices": {
            "stages": [str(d) for d in devices],
            "names": [device_name(d) for d in devices],
        },
        "git": git_state(),
        "versions": current["versions"],
        "hostname": current["hostname"],
        "slurm": current["slurm"],
        "cuda_visible_devices": current["cuda_visible_devices"],
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "threads": torch.get_num_threads(),
        },
        "started": trainer.attempts[0]["started"],
        "finished": current["finished"],
        "attempts": trainer.attempts,
        "data_md5": trainer.data_md5,
        "final": trainer.history[-1],
    }
    atomic_write_text(args.out_dir / "run.json", json.dumps(record, indent=2) + "\n")


# -------------------------------------------------------------------------- CLI


def available_cpus() -> int:
    """The CPUs this process may use (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python workflow/scripts/train.py --data-dir resources/fashion_mnist "
        "--out-dir results/runs/base --devices cpu cpu --epochs 2",
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder with the four .gz files"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="run folder for outputs")
    parser.add_argument(
        "--devices", nargs="+", default=["auto"], help="'auto' or one device per stage"
    )
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--hidden-size", type=positive_int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tutorial-double-scaling", action="store_true", help="divide by 255 twice"
    )
    parser.add_argument(
        "--microbatches", type=positive_int, default=1, help="GPipe chunks per batch"
    )
    parser.add_argument("--adam-impl", choices=sorted(ADAM_IMPLS), default="for_loop")
    parser.add_argument("--threads", type=positive_int, default=available_cpus())
    parser.add_argument(
        "--deadline-margin",
        type=float,
        default=90.0,
        help="under SLURM, checkpoint and leave this many seconds before the time limit",
    )
    parser.add_argument("--run-id", help="name recorded in run.json (default: out-dir's name)")
    parser.add_argument(
        "--swept", nargs="*", default=[], help="parameters a sweep varies (provenance)"
    )
    args = parser.parse_args(argv)
    if args.microbatches > args.batch_size:
        parser.error(
            f"--microbatches ({args.microbatches}) cannot exceed --batch-size ({args.batch_size})"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [name for name in FILE_NAMES if not (args.data_dir / name).is_file()]
    if missing:
        fail(f"{args.data_dir} lacks {', '.join(missing)} (config key data.dir)")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
