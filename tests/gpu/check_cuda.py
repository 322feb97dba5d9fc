#!/usr/bin/env python3
"""The CUDA checks, for a machine with (at least) one GPU; the test machines have none.

Trains on synthetic data with the stages on [cuda:0, cpu] and [cuda:0, cuda:0], one and
four micro-batches, and checks against the CPU: losses within float tolerance, the same
numbers twice on the same GPU, a SIGTERM-stopped run resuming to the same numbers. Then the
distributed engine with both stages' processes on the one GPU (NCCL; where NCCL refuses
two processes on one GPU, that is recorded, not failed) against the single-process engine
on the same layout, and every run's timeline.csv (CUDA events) drawn by plot_timeline.py.
Then times the workflow's epoch with benchmark.py on the same layouts. Exits non-zero if a
check fails; writes results.json (and the benchmark's JSON) into --out.

    python tests/gpu/check_cuda.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from fmnist.synthetic import write_synthetic  # noqa: E402

LAYOUTS = [["cuda:0", "cpu"], ["cuda:0", "cuda:0"]]
METRICS = ["train_loss", "test_loss", "test_accuracy"]


def train(
    data: Path, out: Path, devices, microbatches: int, epochs: int, *more: str
) -> subprocess.Popen:
    command = [
        sys.executable,
        str(SCRIPTS / "train.py"),
        "--data-dir",
        str(data),
        "--out-dir",
        str(out),
        "--devices",
        *devices,
        "--epochs",
        str(epochs),
        "--microbatches",
        str(microbatches),
        "--threads",
        "1",
        *more,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, expect: int = 0) -> str:
    output, _ = process.communicate(timeout=600)
    if process.returncode != expect:
        raise SystemExit(f"train.py exited {process.returncode}, expected {expect}:\n{output}")
    return output


def metrics(out: Path) -> list[dict]:
    with (out / "epochs.csv").open() as handle:
        return [{m: float(row[m]) for m in METRICS} for row in csv.DictReader(handle)]


def close(a: list[dict], b: list[dict], rtol: float) -> bool:
    return all(
        abs(x[m] - y[m]) <= rtol * max(abs(y[m]), 1e-12) for x, y in zip(a, b) for m in METRICS
    )


def check_layouts(data: Path, work: Path, epochs: int) -> tuple[dict, list[str]]:
    results, failures = {}, []
    reference = work / "cpu"
    finished(train(data, reference, ["cpu", "cpu"], 1, epochs))
    expected = metrics(reference)
    for devices in LAYOUTS:
        for m in (1, 4):
            name = f"{'+'.join(devices)}_m{m}"
            first, second = work / f"{name}_a", work / f"{name}_b"
            finished(train(data, first, devices, m, epochs))
            finished(train(data, second, devices, m, epochs))
            got = metrics(first)
            record = json.loads((first / "run.json").read_text())
            results[name] = {
                "epochs": got,
                "deterministic": got == metrics(second),
                # GPU and CPU float32 sums differ: compare the first epoch, loosely;
                # GPU against GPU must be bitwise equal.
                "close_to_cpu": close(got[:1], expected[:1], rtol=2e-2),
                "samples_per_second": [r["samples_per_second"] for r in csv_rows(first)],
                "device_names": record["attempts"][-1]["device_names"],
                "train_step": record["setup"]["train_step"],
            }
            if not (results[name]["deterministic"] and results[name]["close_to_cpu"]):
                failures.append(name)
    results["cpu_reference"] = expected
    return results, failures


def csv_rows(out: Path) -> list[dict]:
    with (out / "epochs.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def check_resume(data: Path, work: Path, epochs: int) -> bool:
    """SIGTERM after the first epoch, then resume: the numbers of an uninterrupted run."""
    devices = LAYOUTS[0]
    whole, stopped = work / "whole", work / "stopped"
    finished(train(data, whole, devices, 1, epochs))
    process = train(data, stopped, devices, 1, epochs)
    while not (stopped / "epochs.csv").exists() or len(metrics(stopped)) < 1:
        if process.poll() is not None:
            raise SystemExit(f"train.py ended before its first epoch:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    finished(process, expect=75)
    finished(train(data, stopped, devices, 1, epochs))
    return metrics(stopped) == metrics(whole)


def plot_timeline(out: Path) -> bool:
    """timeline.csv of a GPU run passes bubble.py's checks and is drawn."""
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "plot_timeline.py"),
            "--timeline",
            str(out / "timeline.csv"),
            "--run-json",
            str(out / "run.json"),
            "--png",
            str(out / "timeline.png"),
            "--pdf",
            str(out / "timeline.pdf"),
        ],
        capture_output=True,
        text=True,
    )
    print(done.stdout + done.stderr)
    return done.returncode == 0


def check_distributed(data: Path, work: Path, epochs: int) -> tuple[dict, list[str]]:
    """Two stage processes on cuda:0 (NCCL) against one process on [cuda:0, cuda:0]."""
    devices, failures = ["cuda:0", "cuda:0"], []
    single, dist_out = work / "cuda0+cuda0_m4_a", work / "distributed_m4"
    process = train(data, dist_out, devices, 4, epochs, "--engine", "distributed")
    output, _ = process.communicate(timeout=600)
    result = {"exit": process.returncode, "log_tail": output[-3000:]}
    if process.returncode != 0:
        if "Duplicate GPU" in output or "duplicate GPU" in output:
            result["possible"] = False  # NCCL: one process per GPU
            return result, failures
        return result, ["distributed"]
    result["possible"] = True
    got, expected = metrics(dist_out), metrics(single)
    result["bitwise_single_process"] = got == expected
    result["close_to_single_process"] = close(got, expected, rtol=1e-4)
    result["record_setup"] = json.loads((dist_out / "run.json").read_text())["setup"]
    result["timeline_drawn"] = plot_timeline(dist_out)
    if not (result["close_to_single_process"] and result["timeline_drawn"]):
        failures.append("distributed")
    return result, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=20000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    data = work / "data"
    write_synthetic(data, args.train_size, 2000, seed=0)
    layouts, failures = check_layouts(data, work, args.epochs)
    resumed = check_resume(data, work, args.epochs)
    if not resumed:
        failures.append("resume")
    timelines = {name: plot_timeline(work / f"{name}_a") for name in layouts if "+" in name}
    failures += [f"timeline {name}" for name, drawn in timelines.items() if not drawn]
    distributed, more = check_distributed(data, work, args.epochs)
    failures += more
    results = {
        "layouts": layouts,
        "resume_exact": resumed,
        "timelines_drawn": timelines,
        "distributed": distributed,
        "failures": failures,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    for devices in LAYOUTS:
        subprocess.run(
            [
                sys.executable,
                str(SCRIPTS / "benchmark.py"),
                "--devices",
                *devices,
                "--threads",
                "1",
                "--repetitions",
                "3",
                "--microbatches",
                "1",
                "4",
                "--out",
                str(args.out / f"benchmark_{'+'.join(devices)}.json"),
            ],
            check=True,
        )
    print(json.dumps({"failures": failures, "resume_exact": resumed}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
