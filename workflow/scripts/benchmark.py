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
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from fmnist import idx, synthetic
from fmnist.benchmarking import (
    build_variants,
    sgemm_gflops,
    step_flops,
    torchvision_root,
)
from fmnist.devices import device_name, resolve_devices
from fmnist.run_record import package_version
from fmnist.steps import ADAM_IMPLS
from fmnist.trainer import configure_determinism

# ---------------------------------------------------------------------- running


def summarize(values: list[float]) -> dict:
    return {"all": values, "best": max(values), "median": statistics.median(values)}


def prepare_data(args, tmp: Path) -> tuple[Path, dict]:
    """The data folder to time on (given, or generated synthetic) and how it was made."""
    if args.data_dir is not None:
        return args.data_dir, {"synthetic": False, "data_dir": str(args.data_dir)}
    data_dir = tmp / "data"
    synthetic.write_synthetic(data_dir, args.train_size, args.test_size, args.data_seed)
    made = {"train_size": args.train_size, "test_size": args.test_size, "seed": args.data_seed}
    return data_dir, {"synthetic": True, **made}


def time_rounds(args, runs: dict, devices) -> tuple[dict, dict]:
    """Seconds and losses of every (threads, variant) per round, and the sgemm peaks."""
    results = {
        t: {key: {"seconds": [], "samples": v.samples, "losses": []} for key, v in runs[t]}
        for t in args.threads
    }
    sgemm = {t: [] for t in args.threads}
    for rep in range(args.repetitions):
        for t in args.threads:
            configure_determinism(t)
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
    return results, sgemm


def variant_entries(variants: list, results: dict, flops: dict) -> dict:
    """Per variant: samples/s, ratios to the first variant (the tutorial), GFLOP/s."""
    entries, tutorial = {}, None
    for key, variant in variants:
        r = results[key]
        entry = {
            "label": variant.label,
            "group": variant.group,
            "samples_per_second": summarize([r["samples"] / s for s in r["seconds"]]),
            "losses": r["losses"],
        }
        tutorial = tutorial or entry
        tut, sps = tutorial["samples_per_second"], entry["samples_per_second"]
        entry["ratio_to_tutorial"] = {
            "best": sps["best"] / tut["best"],
            "median": sps["median"] / tut["median"],
            "median_of_rounds": statistics.median(a / b for a, b in zip(sps["all"], tut["all"])),
        }
        entry["gflops"] = {k: sps[k] * flops["total"] / 1e9 for k in ("best", "median")}
        entries[key] = entry
    return entries


def benchmark(args, argv: list[str]) -> dict:
    devices, why = resolve_devices(args.devices)
    print(why, flush=True)
    flops = step_flops(args.hidden_size)
    with tempfile.TemporaryDirectory(prefix="fmnist-benchmark-") as tmp:
        tmp = Path(tmp)
        data_dir, data_source = prepare_data(args, tmp)
        args.train_size_actual = len(idx.load_split(data_dir, "train")[1])
        root = torchvision_root(data_dir, tmp / "torchvision")
        # One training run per (threads, variant): round r is epoch r of that run.
        runs = {
            t: build_variants(args, data_dir, root, tmp / f"runs{t}", devices) for t in args.threads
        }
        results, sgemm = time_rounds(args, runs, devices)
    settings = {
        "devices": [str(d) for d in devices],
        **{k: getattr(args, k) for k in ("batch_size", "lr", "hidden_size", "seed")},
        **{k: getattr(args, k) for k in ("repetitions", "threads", "adam_impls", "microbatches")},
        "floor_steps": args.floor_steps or -(-args.train_size_actual // args.batch_size),
        "sgemm_size": args.sgemm_size,
        "data": data_source,
        "train_samples": args.train_size_actual,
    }
    return {
        "command": ["workflow/scripts/benchmark.py", *argv],
        "settings": settings,
        "environment": environment(devices),
        "flops_per_sample": flops,
        "threads": {
            str(t): {
                "variants": variant_entries(runs[t], results[t], flops),
                "sgemm_gflops": summarize(sgemm[t]),
            }
            for t in args.threads
        },
    }


def environment(devices) -> dict:
    return {
        "hostname": platform.node(),
        "devices": [device_name(d) for d in devices],
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "numpy": package_version("numpy"),
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


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python workflow/scripts/benchmark.py --threads 1 2 --repetitions 3 "
        "--out results/benchmark.json",
    )
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
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden-size", type=positive, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--adam-impls",
        nargs="+",
        choices=sorted(ADAM_IMPLS),
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
