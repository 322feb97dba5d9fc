"""What benchmark.py times: the tutorial's loop, the workflow's epoch and compute floors.

Each variant has ``run() -> (seconds, loss)`` and ``samples``; see benchmark.py.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fmnist.config.settings import defaults
from fmnist.data.idx import FILE_NAMES, load_split
from fmnist.engine.kernel_step import KernelStep
from fmnist.engine.model import INPUT_SIZE, OUTPUT_SIZE, ModelParallelMLP
from fmnist.engine.single_process import SingleProcessEngine
from fmnist.engine.step import ADAM_IMPLS, AutogradStep
from fmnist.engine.trainer import RunSetup, Trainer
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

from bench.tutorial import SeqNet


def step_flops(hidden: int, input_size: int = INPUT_SIZE, output: int = OUTPUT_SIZE) -> dict:
    """Matmul FLOPs of one training step, per sample (a multiply-add counts 2).

    forward           x W1^T: 2*in*hidden      a W2^T: 2*hidden*out
    weight gradients  g_h^T x: 2*hidden*in      g^T a: 2*out*hidden
    input gradients   g W2: 2*out*hidden (layer 2 only: layer 1's input is the data,
                      which needs no gradient, and autograd does not compute it)
    For 784-200-10: 317,600 + 317,600 + 4,000 = 639,200, about 0.64 MFLOP. Not
    counted: bias additions, log_softmax, the loss, and Adam's elementwise update
    (per step, not per sample: about 10 FLOPs x 159,010 parameters / 100 samples =
    16 kFLOP per sample at batch size 100, 2.5%).
    """
    forward = 2 * input_size * hidden + 2 * hidden * output
    weight_gradients = 2 * hidden * input_size + 2 * output * hidden
    input_gradients = 2 * output * hidden
    return {
        "forward": forward,
        "weight_gradients": weight_gradients,
        "input_gradients": input_gradients,
        "total": forward + weight_gradients + input_gradients,
    }


def synchronize(devices) -> None:
    for device in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- (a) the tutorial


def torchvision_root(data_dir: Path, root: Path) -> Path:
    """Decompress the four files into root/FashionMNIST/raw/, where torchvision looks."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES:
        with gzip.open(data_dir / name, "rb") as src, open(raw / name[: -len(".gz")], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


class Tutorial:
    group, label = "a", "tutorial loop"

    def __init__(self, root: Path, devices, args):
        self.devices = devices
        torch.manual_seed(args.seed)
        self.model = SeqNet(INPUT_SIZE, args.hidden_size, OUTPUT_SIZE, devices)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.loss_function = nn.CrossEntropyLoss()
        fmnist_train = datasets.FashionMNIST(
            root=str(root), train=True, download=False, transform=ToTensor()
        )
        self.train_loader = DataLoader(fmnist_train, batch_size=args.batch_size, shuffle=True)
        self.samples = len(fmnist_train)

    def run(self) -> tuple[float, float]:
        """One epoch of the tutorial's train(): seconds and its average loss."""
        model, optimizer = self.model, self.optimizer
        loss_function, train_loader = self.loss_function, self.train_loader
        started = time.perf_counter()
        # ---- the tutorial's loop body, its devices replaced by the stage devices
        running_loss = 0.0
        model.train()
        for _i, (images, labels) in enumerate(train_loader):
            images = torch.div(images, 255.0)

            optimizer.zero_grad()
            outputs = model(images)
            loss = loss_function(outputs, labels.to(self.devices[1]))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()

        average_loss = running_loss / len(train_loader)
        # ----
        synchronize(self.devices)
        return time.perf_counter() - started, average_loss


# ---------------------------------------------------------- (b) train.py's epoch


class NeverStop:
    reason = None

    def should_stop(self) -> bool:
        return False


class Workflow:
    """A train.py Trainer; each run() trains one more epoch, as train.py does."""

    group = "b"

    def __init__(self, data_dir: Path, out_dir: Path, devices, args, adam_impl, microbatches):
        self.adam_impl, self.microbatches = adam_impl, microbatches
        self.label = f"workflow {adam_impl} m={microbatches}"
        params = {
            **defaults()["train"],
            "devices": [str(d) for d in devices],
            "batch_size": args.batch_size,
            "lr": args.lr,
            "hidden_size": args.hidden_size,
            "seed": args.seed,
            "microbatches": microbatches,
            "adam_impl": adam_impl,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        setup = RunSetup(data_dir, out_dir, threads=torch.get_num_threads())
        self.trainer = Trainer(params, setup, SingleProcessEngine(devices))
        self.samples = len(self.trainer.train_data)

    def run(self) -> tuple[float, float]:
        t = self.trainer
        assert t.run_epoch_batches(NeverStop())
        row = t.finish_epoch()
        return row["epoch_seconds"], row["train_loss"]  # train.py's own timing


class WorkflowAutograd(Workflow):
    """The same Trainer with train.py's AutogradStep: the hot path before KernelStep."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        t = self.trainer
        t.step = AutogradStep(t.model, t.optimizer, self.microbatches)
        self.label = f"workflow {self.adam_impl} m={self.microbatches}, autograd step"


# ------------------------------------------------------------- (c) compute floor


class Floor:
    """One fixed batch on the stage devices; the step repeated ``steps`` times."""

    group = "c"
    warmup = 10

    def __init__(self, batch, devices, args, steps: int):
        self.x, self.y = batch
        self.devices, self.steps = devices, steps
        self.samples = steps * self.x.shape[0]
        torch.manual_seed(args.seed)
        self.model = ModelParallelMLP(args.hidden_size, devices)

    def run(self) -> tuple[float, float | None]:
        for _ in range(self.warmup):
            self.step()
        synchronize(self.devices)
        started = time.perf_counter()
        for _ in range(self.steps):
            loss = self.step()
        synchronize(self.devices)
        seconds = time.perf_counter() - started
        return seconds, None if loss is None else float(loss.detach())


class EagerFloor(Floor):
    def __init__(self, batch, devices, args, steps, adam_impl: str, set_to_none: bool):
        super().__init__(batch, devices, args, steps)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=args.lr, **ADAM_IMPLS[adam_impl]
        )
        self.set_to_none = set_to_none
        zero = "None" if set_to_none else "zero"
        self.label = f"floor eager {adam_impl}, grads to {zero}"

    def step(self):
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss


class KernelStepFloor(Floor):
    def __init__(self, batch, devices, args, steps, adam_impl: str):
        super().__init__(batch, devices, args, steps)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, **ADAM_IMPLS[adam_impl])
        self.train_step = KernelStep(self.model, optimizer, self.x.shape[0], 1)
        self.loss = torch.zeros((), device=devices[1])
        self.label = f"floor KernelStep {adam_impl}"

    def step(self):
        self.train_step(self.x, self.y, self.loss)
        return self.loss


class MatmulBound(Floor):
    """The step's five matmuls alone, at its shapes and operand layouts (no bias)."""

    label = "matmuls of the step alone"

    def __init__(self, batch, devices, args, steps):
        super().__init__(batch, devices, args, steps)
        d0, d1 = devices
        n, hidden = self.x.shape[0], args.hidden_size
        w1, w2 = (p.detach() for p in (self.model.stages[0][0].weight, self.model.stages[1].weight))
        g2 = torch.randn(n, OUTPUT_SIZE, device=d1)
        g_h = torch.randn(n, hidden, device=d0)
        a = torch.randn(n, hidden, device=d1)
        out = {
            "h": torch.empty(n, hidden, device=d0),
            "logits": torch.empty(n, OUTPUT_SIZE, device=d1),
            "g_w2": torch.empty_like(w2),
            "g_a": torch.empty(n, hidden, device=d1),
            "g_w1": torch.empty_like(w1),
        }
        self.products = [
            (self.x, w1.t(), out["h"]),  # forward, layer 1
            (a, w2.t(), out["logits"]),  # forward, layer 2
            (g2.t(), a, out["g_w2"]),  # weight gradient, layer 2
            (g2, w2, out["g_a"]),  # input gradient, layer 2
            (g_h.t(), self.x, out["g_w1"]),  # weight gradient, layer 1
        ]

    def step(self):
        for a, b, out in self.products:
            torch.mm(a, b, out=out)
        return None


def sgemm_gflops(size: int, device, repeats: int = 3) -> float:
    """Best GFLOP/s of a square float32 matmul of ``size``: the machine's matmul peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    c = torch.empty(size, size, device=device)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        synchronize([device])
        started = time.perf_counter()
        torch.mm(a, b, out=c)
        synchronize([device])
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def fixed_batch(data_dir: Path, devices, batch_size: int):
    """The first batch of the training split, scaled like ToTensor, on the stage devices."""
    images, labels = load_split(data_dir, "train")
    x = torch.from_numpy(images[:batch_size].reshape(batch_size, -1).astype("float32"))
    y = torch.from_numpy(labels[:batch_size].astype("int64"))
    return x.div(255.0).to(devices[0]), y.to(devices[1])


def build_variants(args, data_dir: Path, root: Path, work: Path, devices) -> list:
    num_batches = -(-args.train_size_actual // args.batch_size)
    steps = args.floor_steps or num_batches
    batch = fixed_batch(data_dir, devices, args.batch_size)
    variants = [("tutorial", Tutorial(root, devices, args))]

    def workflow(cls, impl, m):
        key = f"workflow_{impl}_m{m}" + ("_autograd" if cls is WorkflowAutograd else "")
        return key, cls(data_dir, work / key, devices, args, impl, m)

    variants += [workflow(Workflow, impl, 1) for impl in args.adam_impls]
    variants += [workflow(Workflow, "for_loop", m) for m in args.microbatches if m != 1]
    variants.append(workflow(WorkflowAutograd, "for_loop", 1))
    variants += [
        ("floor_eager_for_loop", EagerFloor(batch, devices, args, steps, "for_loop", True)),
        ("floor_eager_for_loop_zero", EagerFloor(batch, devices, args, steps, "for_loop", False)),
        ("floor_eager_fused", EagerFloor(batch, devices, args, steps, "fused", True)),
    ]
    if all(device.type == "cpu" for device in devices):  # the hand-written step is the CPU's
        variants += [
            (f"floor_kernelstep_{impl}", KernelStepFloor(batch, devices, args, steps, impl))
            for impl in args.adam_impls
        ]
    variants.append(("matmul_bound", MatmulBound(batch, devices, args, steps)))
    return variants
