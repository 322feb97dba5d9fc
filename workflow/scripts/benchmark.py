#!/usr/bin/env python3
"""Time the tutorial's training loop against the workflow's, and both against the machine.

In one process, on the same data, with the same model, hyperparameters and stage
devices, interleaved over --repetitions rounds (the machine's speed drifts, so
variants are compared round by round), it times:

  (a) tutorial  the tutorial's loop as written: torchvision's FashionMNIST
                (download=False, on IDX files in torchvision's raw layout), DataLoader
                (batch_size, shuffle=True), ToTensor per sample, torch.div(images, 255.),
                .item() every step; its SeqNet with the stage devices given.
  (b) workflow  one epoch of train.py's Trainer (BatchMaker + TrainStep) per round, for
                each --adam-impls setting, for --microbatches > 1 (for_loop), and with
                train.py's AutogradStep instead of TrainStep (the hot path before
                TrainStep: autograd, zero_grad, optimizer.step()).
  (c) floor     one fixed batch, no data movement, the step repeated: eager autograd
                with for_loop Adam (zero_grad to None and to zero) and fused Adam;
                train.py's TrainStep; and the step's matmuls alone (the bound).

Each variant reports samples/s (best and median over the rounds), its ratio to (a)
(best/best, median/median, and the median of the per-round ratios) and the GFLOP/s
that its samples/s means (see step_flops). A large square sgemm gives the machine's
matmul peak. A (threads, variant) pair is one training run: round r is its epoch r,
so the workflow's losses are train.py's for the same settings and --threads.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS_DIR))
import fashion_mnist  # noqa: E402


def import_train():
    """workflow/scripts/train.py as module ``train`` (the one already imported, if so)."""
    path = SCRIPTS_DIR / "train.py"
    module = sys.modules.get("train")
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


train = import_train()

INPUT_SIZE, OUTPUT_SIZE = train.INPUT_SIZE, train.OUTPUT_SIZE


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


class SeqNet(nn.Module):
    """The tutorial's model; its 'cuda:0' and 'cuda:1' are the stage devices given."""

    def __init__(self, input_size, hidden_size1, output_size, devices):
        super().__init__()
        self.devices = devices
        self.lin1 = nn.Linear(input_size, hidden_size1).to(devices[0])
        self.lin2 = nn.Linear(hidden_size1, output_size).to(devices[1])

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = self.lin1(x.to(self.devices[0]))
        x = F.log_softmax(x, dim=1)
        out = self.lin2(x.to(self.devices[1]))
        return out


def torchvision_root(data_dir: Path, root: Path) -> Path:
    """Decompress the four files into root/FashionMNIST/raw/, where torchvision looks."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in fashion_mnist.FILE_NAMES:
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
        argv = [
            "--data-dir", str(data_dir),
            "--out-dir", str(out_dir),
            "--devices", *[str(d) for d in devices],
            "--batch-size", str(args.batch_size),
            "--lr", str(args.lr),
            "--hidden-size", str(args.hidden_size),
            "--seed", str(args.seed),
            "--microbatches", str(microbatches),
            "--adam-impl", adam_impl,
        ]  # fmt: skip
        self.trainer = train.Trainer(train.parse_args(argv), devices)
        self.samples = len(self.trainer.train)

    def run(self) -> tuple[float, float]:
        t = self.trainer
        assert t.run_epoch_batches(NeverStop())
        row = t.finish_epoch()
        return row["epoch_seconds"], row["train_loss"]  # train.py's own timing


class WorkflowAutograd(Workflow):
    """The same Trainer with train.py's AutogradStep: the hot path before TrainStep."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        t = self.trainer
        t.step = train.AutogradStep(t.model, t.optimizer, self.microbatches)
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
        self.model = train.ModelParallelMLP(args.hidden_size, devices)

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
            self.model.parameters(), lr=args.lr, **train.ADAM_IMPLS[adam_impl]
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


class TrainStepFloor(Floor):
    def __init__(self, batch, devices, args, steps, adam_impl: str):
        super().__init__(batch, devices, args, steps)
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=args.lr, **train.ADAM_IMPLS[adam_impl]
        )
        self.train_step = train.TrainStep(self.model, optimizer, self.x.shape[0], 1)
        self.loss = torch.zeros((), device=devices[1])
        self.label = f"floor TrainStep {adam_impl}"

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


# ---------------------------------------------------------------------- running


def fixed_batch(data_dir: Path, devices, batch_size: int):
    """The first batch of the training split, scaled like ToTensor, on the stage devices."""
    images, labels = fashion_mnist.load_split(data_dir, "train")
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
    variants += [
        (f"floor_trainstep_{impl}", TrainStepFloor(batch, devices, args, steps, impl))
        for impl in args.adam_impls
    ]
    variants.append(("matmul_bound", MatmulBound(batch, devices, args, steps)))
    return variants


def summarize(values: list[float]) -> dict:
    return {"all": values, "best": max(values), "median": statistics.median(values)}


def benchmark(args, argv: list[str]) -> dict:
    devices, why = train.resolve_devices(args.devices)
    print(why, flush=True)
    flops = step_flops(args.hidden_size)
    with tempfile.TemporaryDirectory(prefix="fmnist-benchmark-") as tmp:
        tmp = Path(tmp)
        if args.data_dir is None:
            data_dir = tmp / "data"
            fashion_mnist.write_synthetic(data_dir, args.train_size, args.test_size, args.data_seed)
            data_source = {
                "synthetic": True,
                "train_size": args.train_size,
                "test_size": args.test_size,
                "seed": args.data_seed,
            }
        else:
            data_dir = args.data_dir
            data_source = {"synthetic": False, "data_dir": str(data_dir)}
        args.train_size_actual = len(fashion_mnist.load_split(data_dir, "train")[1])
        root = torchvision_root(data_dir, tmp / "torchvision")
        # One training run per (threads, variant): round r is epoch r of that run.
        runs = {
            t: build_variants(args, data_dir, root, tmp / f"runs{t}", devices) for t in args.threads
        }
        results = {
            t: {key: {"seconds": [], "samples": v.samples, "losses": []} for key, v in runs[t]}
            for t in args.threads
        }
        sgemm = {t: [] for t in args.threads}
        for rep in range(args.repetitions):
            for t in args.threads:
                train.configure_determinism(t)
                # alternate the order, so no variant always runs first or last in a round
                order = runs[t] if rep % 2 == 0 else runs[t][::-1]
                for key, variant in order:
                    seconds, loss = variant.run()
                    results[t][key]["seconds"].append(seconds)
                    results[t][key]["losses"].append(loss)
                    rate = variant.samples / seconds
                    print(
                        f"round {rep + 1}/{args.repetitions}  threads {t}  {key:34s} "
                        f"{rate:10.0f} samples/s",
                        flush=True,
                    )
                sgemm[t].append(sgemm_gflops(args.sgemm_size, devices[0]))
    report = {
        "command": ["workflow/scripts/benchmark.py", *argv],
        "settings": {
            "devices": [str(d) for d in devices],
            "batch_size": args.batch_size,
            "lr": args.lr,
            "hidden_size": args.hidden_size,
            "seed": args.seed,
            "repetitions": args.repetitions,
            "threads": args.threads,
            "adam_impls": args.adam_impls,
            "microbatches": args.microbatches,
            "floor_steps": args.floor_steps or -(-args.train_size_actual // args.batch_size),
            "sgemm_size": args.sgemm_size,
            "data": data_source,
            "train_samples": args.train_size_actual,
        },
        "environment": environment(devices),
        "flops_per_sample": flops,
        "threads": {},
    }
    for t in args.threads:
        variants = {}
        tutorial = None
        for key, variant in runs[t]:
            r = results[t][key]
            rates = [r["samples"] / s for s in r["seconds"]]
            entry = {
                "label": variant.label,
                "group": variant.group,
                "samples_per_second": summarize(rates),
                "losses": r["losses"],
            }
            if tutorial is None:
                tutorial = entry
            tut = tutorial["samples_per_second"]
            sps = entry["samples_per_second"]
            entry["ratio_to_tutorial"] = {
                "best": sps["best"] / tut["best"],
                "median": sps["median"] / tut["median"],
                "median_of_rounds": statistics.median(
                    a / b for a, b in zip(sps["all"], tut["all"])
                ),
            }
            entry["gflops"] = {k: sps[k] * flops["total"] / 1e9 for k in ("best", "median")}
            variants[key] = entry
        report["threads"][str(t)] = {
            "variants": variants,
            "sgemm_gflops": summarize(sgemm[t]),
        }
    return report


def environment(devices) -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "hostname": platform.node(),
        "devices": [train.device_name(d) for d in devices],
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "mkl": torch.backends.mkl.is_available(),
        "interop_threads": torch.get_num_interop_threads(),
    }


def table(report: dict) -> str:
    flops = report["flops_per_sample"]["total"]
    lines = [
        f"FLOPs per sample of a step: {flops:,} (matmuls: forward, weight gradients, "
        "layer 2's input gradient)",
        f"devices {report['settings']['devices']}, batch size {report['settings']['batch_size']}, "
        f"{report['settings']['train_samples']} training samples, "
        f"{report['settings']['repetitions']} interleaved rounds",
    ]
    for t, block in report["threads"].items():
        lines += [
            "",
            f"threads {t}: samples/s (best, median of rounds); x = ratio to (a): "
            "best/best, median/median, median of per-round ratios",
            f"{'variant':46s} {'best':>9s} {'median':>9s} {'x best':>7s} {'x med':>7s} "
            f"{'x round':>7s} {'GFLOP/s':>8s}",
        ]
        for entry in block["variants"].values():
            sps, ratio = entry["samples_per_second"], entry["ratio_to_tutorial"]
            name = f"({entry['group']}) {entry['label']}"
            lines.append(
                f"{name:46s} {sps['best']:9.0f} {sps['median']:9.0f} {ratio['best']:7.2f} "
                f"{ratio['median']:7.2f} {ratio['median_of_rounds']:7.2f} "
                f"{entry['gflops']['best']:8.1f}"
            )
        peak = block["sgemm_gflops"]
        lines.append(
            f"    machine matmul peak, {report['settings']['sgemm_size']}^3 sgemm: "
            f"{peak['best']:.1f} GFLOP/s best, {peak['median']:.1f} median"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python workflow/scripts/benchmark.py --threads 1 2 --repetitions 3 "
        "--out results/benchmark.json",
    )
    positive = train.positive_int
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four FashionMNIST .gz files; default: generate synthetic "
        "data of --train-size/--test-size",
    )
    parser.add_argument("--train-size", type=positive, default=60000)
    parser.add_argument("--test-size", type=positive, default=10000)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--repetitions", type=positive, default=3, help="interleaved rounds")
    cpus = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--threads",
        type=positive,
        nargs="+",
        default=sorted({1, cpus}),
        help=f"torch thread counts to compare, interleaved (default: 1 and {cpus})",
    )
    parser.add_argument("--devices", nargs="+", default=["cpu", "cpu"], help="as train.py's")
    parser.add_argument("--batch-size", type=positive, default=100)
    parser.add_argument("--lr", type=train.positive_float, default=0.01)
    parser.add_argument("--hidden-size", type=positive, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--adam-impls",
        nargs="+",
        choices=sorted(train.ADAM_IMPLS),
        default=["for_loop", "foreach", "fused"],
    )
    parser.add_argument(
        "--microbatches",
        type=positive,
        nargs="+",
        default=[1, 2, 4],
        help="GPipe micro-batch counts for the workflow (for_loop)",
    )
    parser.add_argument(
        "--floor-steps", type=positive, help="steps per round of (c) (default: an epoch's)"
    )
    parser.add_argument("--sgemm-size", type=positive, default=2048)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if max(args.microbatches) > args.batch_size:
        parser.error("--microbatches cannot exceed --batch-size")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = benchmark(args, argv)
    print()
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
