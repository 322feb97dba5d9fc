#!/usr/bin/env python3
"""The GPU check: every part of the workflow that only runs on a GPU, run on one.

The test machines have no GPU; the CPU suite enforces CUDA's and NCCL's rules with stand-ins
(tests/gpu/README.md lists what covers each GPU-only line). This script is the rest: one
prepared command for a machine with one GPU or more, a few minutes in all. Every check runs
on its own (a failing one is recorded and the others still run) and results.json is written
after each, with every check's verdict, figures and error.

    python tests/gpu/check_cuda.py --out DIR            # all checks (under 5 minutes, 1 GPU)
    python tests/gpu/check_cuda.py --out DIR --quick    # the essentials (about a minute)
    python tests/gpu/check_cuda.py --out DIR --only resume auto

Exit status: 0 every check that applies passed; 1 a check failed; 2 no GPU (nothing run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
STOP_HOOK = Path(__file__).resolve().parent / "stop_hook"
sys.path.insert(0, str(SCRIPTS))

METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]
# GPU against CPU after one epoch: float32 sums in another order, through Adam's division by
# sqrt(v): losses agree to a few 1e-3 relative, not to the bit. GPU against GPU: to the bit.
CPU_RTOL = 2e-2


class CheckFailed(AssertionError):
    """A check found the GPU code wrong; the message says what."""


@dataclass
class Check:
    name: str
    run: Callable
    doc: str
    quick: bool
    applies: Callable  # Context -> None, or why the check does not apply here


CHECKS: list[Check] = []


def check(name: str, quick: bool = False, applies=lambda ctx: None, doc: str | None = None):
    """Register a check: ``function(ctx, figures)`` fills ``figures`` and raises CheckFailed."""

    def register(function):
        line = doc or (function.__doc__ or "").strip().splitlines()[0]
        CHECKS.append(Check(name, function, line, quick, applies))
        return function

    return register


def needs_gpus(count: int):
    return lambda ctx: None if ctx.gpus >= count else f"needs {count} GPUs, {ctx.gpus} visible"


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """train.py in a subprocess; its run folder and output."""

    out: Path
    process: subprocess.Popen
    output: str | None = None

    def finish(self, expect: int = 0) -> str:
        if self.output is None:
            self.output, _ = self.process.communicate(timeout=900)
        if self.process.returncode != expect:
            raise CheckFailed(
                f"train.py into {self.out.name} exited {self.process.returncode}, expected "
                f"{expect}:\n{self.output[-4000:]}"
            )
        return self.output

    def record(self) -> dict:
        return json.loads((self.out / "run.json").read_text())

    def rows(self) -> list[dict]:
        import csv

        with (self.out / "epochs.csv").open() as handle:
            return list(csv.DictReader(handle))

    def metrics(self) -> list[list[str]]:
        """The metric columns as written (repr of each float: equal text, equal bits)."""
        return [[row[m] for m in METRICS] for row in self.rows()]

    def weights(self) -> dict:
        import torch

        return torch.load(self.out / "model.pt", map_location="cpu", weights_only=True)


@dataclass
class Context:
    work: Path
    data: Path
    epochs: int
    gpus: int
    rehearse: bool  # every cuda:i replaced by cpu: the script's plumbing, not CUDA
    quick: bool
    runs: dict = field(default_factory=dict)

    def device(self, name: str) -> str:
        return "cpu" if self.rehearse and name.startswith("cuda") else name

    def train(self, name: str, devices, env: dict | None = None, **options) -> Run:
        """Start train.py (1 thread) into work/name; one Run per name, started once."""
        if name in self.runs:
            return self.runs[name]
        options = {"epochs": self.epochs, "threads": 1, **options}
        if devices != "auto" and self.rehearse and any(d.startswith("cuda") for d in devices):
            options.setdefault("cpu_step", "autograd")  # a stage on a GPU takes autograd's step
        options["devices"] = devices if devices == "auto" else [self.device(d) for d in devices]
        command = [sys.executable, str(SCRIPTS / "train.py"), "--data-dir", str(self.data)]
        command += ["--out-dir", str(self.work / name)]
        for key, value in options.items():
            values = value if isinstance(value, list) else [value]
            command += [f"--{key.replace('_', '-')}", *map(str, values)]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.runs[name] = Run(self.work / name, process)
        return self.runs[name]

    def finished(self, name: str, devices, **options) -> Run:
        run = self.train(name, devices, **options)
        run.finish()
        return run

    def batches_per_epoch(self) -> int:
        from fmnist.data.idx import load_split

        return -(-len(load_split(self.data, "train")[1]) // 100)


def stop_after(steps: int, target: str) -> dict:
    """The environment that makes a run send SIGTERM after ``steps`` optimizer steps."""
    path = os.pathsep.join(filter(None, [str(STOP_HOOK), os.environ.get("PYTHONPATH")]))
    return {
        "PYTHONPATH": path,
        "FMNIST_SIGTERM_AFTER_STEPS": str(steps),
        "FMNIST_SIGTERM_TO": target,
    }


# --------------------------------------------------------------------------- comparisons


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8))
        for k in a
    )


def close(a: list[list[str]], b: list[list[str]], rtol: float) -> bool:
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) <= rtol * max(abs(float(y)), 1e-12)
        for row_a, row_b in zip(a, b)
        for x, y in zip(row_a[1:], row_b[1:])
    )


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def draw_timeline(run: Run) -> dict:
    """timeline.csv passes bubble.py's checks and is drawn (plot_timeline.py)."""
    command = [sys.executable, str(SCRIPTS / "plot_timeline.py")]
    for option, name in [("--timeline", "timeline.csv"), ("--run-json", "run.json"),
                         ("--png", "timeline.png"), ("--pdf", "timeline.pdf")]:  # fmt: skip
        command += [option, str(run.out / name)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    expect(done.returncode == 0, f"timeline of {run.out.name} not drawn:\n{done.stderr[-3000:]}")
    return {"timeline_png": str(run.out / "timeline.png")}


def gpu_run_figures(ctx: Context, run: Run, devices: list[str]) -> dict:
    """What every GPU run must have: peak memory columns, its step, a CPU-loadable model."""
    record, rows = run.record(), run.rows()
    peaks = sorted(c for c in rows[0] if c.startswith("peak_memory_mb"))
    gpus = sorted({d for d in devices if d.startswith("cuda")})
    if not ctx.rehearse and gpus:
        expected = [f"peak_memory_mb_cuda{d.split(':')[1]}" for d in gpus]
        if record["params"]["engine"] == "distributed":
            expected = [f"peak_memory_mb_stage{r}" for r in range(len(devices))]
        expect(peaks == sorted(expected), f"peak memory columns {peaks}, expected {expected}")
    run.weights()  # model.pt of a GPU run loads on the CPU with weights_only=True
    return {
        "train_step": record["setup"]["train_step"],
        "devices": record["setup"]["devices"],
        "device_names": record["attempts"][-1]["device_names"],
        "samples_per_second": [float(r["samples_per_second"]) for r in rows],
        "peak_memory_mb": {c: [float(r[c]) for r in rows] for c in peaks},
    }


# --------------------------------------------------------------------------- the checks


def layout_key(devices: list[str], microbatches: int) -> str:
    """A layout's run name: cuda0+cpu_m4."""
    return f"{'+'.join(devices).replace(':', '')}_m{microbatches}"


def layout_check(devices: list[str], microbatches: int, quick: bool = False, gpus: int = 1):
    key = layout_key(devices, microbatches)
    doc = (
        f"[{', '.join(devices)}], {microbatches} micro-batch(es): the same bits twice, near "
        "the CPU's numbers, peak memory, model.pt on the CPU, the timeline drawn"
    )

    @check(key, quick=quick, applies=needs_gpus(gpus), doc=doc)
    def layout(ctx: Context, figures: dict) -> None:
        first = ctx.train(f"{key}_a", devices, microbatches=microbatches)
        second = ctx.train(f"{key}_b", devices, microbatches=microbatches)
        cpu_key = layout_key(["cpu", "cpu"], microbatches)
        cpu = ctx.train(f"{cpu_key}_a", ["cpu", "cpu"], microbatches=microbatches)
        for run in (first, second, cpu):
            run.finish()
        figures.update(gpu_run_figures(ctx, first, devices), metrics=first.metrics())
        figures["bitwise_repeat"] = first.metrics() == second.metrics() and same_weights(
            first.weights(), second.weights()
        )
        figures["close_to_cpu_epoch_1"] = close(first.metrics()[:1], cpu.metrics()[:1], CPU_RTOL)
        expect(figures["bitwise_repeat"], "two identical runs gave other bits")
        expect(figures["close_to_cpu_epoch_1"], f"epoch 1 differs from the CPU's by > {CPU_RTOL}")
        figures.update(draw_timeline(first))


layout_check(["cuda:0", "cuda:0"], 1, quick=True)
layout_check(["cuda:0", "cuda:0"], 4)
layout_check(["cuda:0", "cpu"], 1)
layout_check(["cuda:0", "cpu"], 4, quick=True)
layout_check(["cpu", "cuda:0"], 4)
layout_check(["cuda:0", "cuda:1"], 1, quick=True, gpus=2)
layout_check(["cuda:0", "cuda:1"], 4, gpus=2)


@check("auto", quick=True)
def auto(ctx: Context, figures: dict) -> None:
    """devices: auto takes the GPUs (a GPU per stage, else shared) and equals that layout."""
    expected = ["cuda:0", "cuda:1"] if ctx.gpus >= 2 else ["cuda:0", "cuda:0"]
    run = ctx.finished("auto_m1", "auto")
    explicit = ctx.finished(f"{layout_key(expected, 1)}_a", expected)
    expected = [ctx.device(d) for d in expected]
    figures["devices"] = run.record()["setup"]["devices"]
    expect(figures["devices"] == expected, f"auto chose {figures['devices']}, not {expected}")
    expect(run.metrics() == explicit.metrics(), f"auto's numbers are not those of {expected}")
    if ctx.gpus >= 2:  # three stages on two GPUs: neighbouring stages share one
        three = ctx.finished("auto_3", "auto", hidden_sizes=[256, 128], stage_split=[1, 1, 1])
        figures["three_stages"] = three.record()["setup"]["devices"]
        want = [ctx.device(d) for d in ["cuda:0", "cuda:0", "cuda:1"]]
        expect(figures["three_stages"] == want, f"3 stages on 2 GPUs: {figures['three_stages']}")
        figures.update(draw_timeline(three))


@check("adam_fused")
def adam_fused(ctx: Context, figures: dict) -> None:
    """adam_impl: fused on [cuda:0, cuda:0]: the same bits twice, near the for_loop numbers."""
    devices = ["cuda:0", "cuda:0"]
    first = ctx.train("fused_a", devices, adam_impl="fused")
    second = ctx.train("fused_b", devices, adam_impl="fused")
    reference = ctx.train(f"{layout_key(devices, 1)}_a", devices)
    for run in (first, second, reference):
        run.finish()
    figures["bitwise_repeat"] = first.metrics() == second.metrics()
    figures["close_to_for_loop"] = close(first.metrics(), reference.metrics(), 1e-3)
    figures["samples_per_second"] = [float(r["samples_per_second"]) for r in first.rows()]
    expect(figures["bitwise_repeat"], "fused Adam: two identical runs gave other bits")
    expect(figures["close_to_for_loop"], "fused Adam strays from for_loop by more than 1e-3")


@check("resume", quick=True)
def resume(ctx: Context, figures: dict) -> None:
    """SIGTERM mid-epoch-2 at a fixed batch: checkpoint on the CPU, resumed to the same bits."""
    devices, per_epoch = ["cuda:0", "cpu"], ctx.batches_per_epoch()
    stop_at = per_epoch + per_epoch // 2
    whole = ctx.train(f"{layout_key(devices, 1)}_a", devices)
    stopped = ctx.train("resumed", devices, env=stop_after(stop_at, "self"))
    whole.finish()
    stopped.finish(expect=75)
    import torch

    state = torch.load(stopped.out / "checkpoint.pt", map_location="cpu", weights_only=True)
    figures["stopped_at"] = {"epoch": state["epoch"] + 1, "batch": state["batches_done"] + 1}
    expect(
        (state["epoch"], state["batches_done"]) == (1, stop_at - per_epoch),
        f"stopped at {figures['stopped_at']}, not after step {stop_at}",
    )
    del ctx.runs["resumed"]
    again = ctx.finished("resumed", devices)
    expect("resuming from" in again.output, "the second attempt did not resume")
    figures["bitwise_uninterrupted"] = again.metrics() == whole.metrics() and same_weights(
        again.weights(), whole.weights()
    )
    expect(figures["bitwise_uninterrupted"], "the resumed run differs from the uninterrupted one")


@check("resume_other_layout", quick=True)
def resume_other_layout(ctx: Context, figures: dict) -> None:
    """Stopped mid-epoch 2 with two stages on cuda:0, resumed as one stage on cuda:0 (its
    shards read by layer name): a layer's GPU kernels do not depend on its stage, so the
    two-stage run's bits (the CPU tests prove it on the CPU)."""
    devices, per_epoch = ["cuda:0", "cuda:0"], ctx.batches_per_epoch()
    whole = ctx.train(f"{layout_key(devices, 1)}_a", devices)
    stopped = ctx.train("other_layout", devices, env=stop_after(per_epoch * 3 // 2, "self"))
    whole.finish()
    stopped.finish(expect=75)
    del ctx.runs["other_layout"]
    again = ctx.finished("other_layout", ["cuda:0"], stage_split=[2])
    expect("resuming from" in again.output, "the second attempt did not resume")
    mine, theirs = again.weights(), whole.weights()
    figures["bitwise_uninterrupted"] = again.metrics() == whole.metrics() and all(
        a.equal(b) for a, b in zip(mine.values(), theirs.values())
    )
    expect(figures["bitwise_uninterrupted"], "the run resumed as one stage differs")


def one_gpu(ctx: Context) -> str | None:
    return None if ctx.gpus == 1 and not ctx.rehearse else "for exactly one visible GPU"


@check("distributed_one_gpu_refused", quick=True, applies=one_gpu)
def distributed_one_gpu(ctx: Context, figures: dict) -> None:
    """Two stage processes on the one GPU: refused before NCCL (exit 2), naming train.devices."""
    run = ctx.train("distributed_one_gpu", ["cuda", "cuda"], engine="distributed")
    output = run.finish(expect=2)
    figures["message"] = next((line for line in output.splitlines() if "error:" in line), "")
    expect("would share one GPU" in output, "no refusal naming the shared GPU")
    expect("Duplicate GPU" not in output, "NCCL was reached before the refusal")


def distributed_check(schedule: str, quick: bool):
    doc = f"{schedule}, two stage processes over NCCL, 4 micro-batches: single-process bits"

    @check(f"distributed_{schedule}", quick=quick, applies=needs_gpus(2), doc=doc)
    def distributed(ctx: Context, figures: dict) -> None:
        devices = ["cuda:0", "cuda:1"]
        run = ctx.train(f"distributed_{schedule}", devices, engine="distributed",
                        schedule=schedule, microbatches=4)  # fmt: skip
        single = ctx.train(f"{layout_key(devices, 4)}_a", devices, microbatches=4)
        run.finish(), single.finish()
        record = run.record()
        figures.update(gpu_run_figures(ctx, run, devices))
        figures["backend"] = record["setup"]["process_group_backend"]
        ranks = record["attempts"][-1]["ranks"]
        figures["gpus"] = [r["gpu_uuid"] for r in ranks]
        figures["bitwise_single_process"] = run.metrics() == single.metrics() and same_weights(
            run.weights(), single.weights()
        )
        expect(ctx.rehearse or figures["backend"] == "nccl", f"backend {figures['backend']}")
        expect(ctx.rehearse or len(set(figures["gpus"])) == 2, "the ranks did not get a GPU each")
        expect(figures["bitwise_single_process"], "numbers differ from the single-process run")
        figures.update(draw_timeline(run))


distributed_check("gpipe", quick=True)
distributed_check("1f1b", quick=False)


@check("distributed_resume", applies=needs_gpus(2))
def distributed_resume(ctx: Context, figures: dict) -> None:
    """SIGTERM to the launcher mid-epoch: the stages stop with a checkpoint; resumed, same bits."""
    devices, per_epoch = ["cuda:0", "cuda:1"], ctx.batches_per_epoch()
    options = {"engine": "distributed", "microbatches": 4}
    whole = ctx.train("distributed_gpipe", devices, schedule="gpipe", **options)
    stopped = ctx.train("distributed_resumed", devices, env=stop_after(per_epoch // 2, "parent"),
                        **options)  # fmt: skip
    whole.finish()
    output = stopped.finish(expect=75)
    figures["stop_line"] = next((x for x in output.splitlines() if "stopping early" in x), "")
    expect((stopped.out / "checkpoint.pt").exists(), "no checkpoint after the stop")
    del ctx.runs["distributed_resumed"]
    again = ctx.finished("distributed_resumed", devices, **options)
    expect("resuming from" in again.output, "the second attempt did not resume")
    figures["bitwise_uninterrupted"] = again.metrics() == whole.metrics() and same_weights(
        again.weights(), whole.weights()
    )
    expect(figures["bitwise_uninterrupted"], "the resumed run differs from the uninterrupted one")


@check("benchmark")
def benchmark(ctx: Context, figures: dict) -> None:
    """benchmark.py on the GPU layouts: samples/s of the tutorial loop and the workflow, m1, m4."""
    layouts = [["cuda:0", "cuda:0"]] + ([["cuda:0", "cuda:1"]] if ctx.gpus >= 2 else [])
    for layout in layouts:
        devices = [ctx.device(d) for d in layout]
        out = ctx.work / f"benchmark_{'+'.join(layout).replace(':', '')}.json"
        command = [sys.executable, str(SCRIPTS / "benchmark.py"), "--data-dir", str(ctx.data)]
        command += ["--devices", *devices, "--threads", "1", "--repetitions", "3"]
        command += ["--microbatches", "1", "4", "--adam-impls", "for_loop", "fused"]
        command += ["--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        expect(done.returncode == 0, f"benchmark.py failed:\n{done.stdout[-2000:]}{done.stderr}")
        variants = json.loads(out.read_text())["threads"]["1"]["variants"]
        figures["+".join(layout)] = {
            key: {
                "samples_per_second_median": v["samples_per_second"]["median"],
                "ratio_to_tutorial_median": v["ratio_to_tutorial"]["median"],
            }
            for key, v in variants.items()
        }
        print(f"benchmark {'+'.join(layout)} (samples/s, median of 3 rounds):", flush=True)
        for key, v in variants.items():
            print(f"  {key:34s} {v['samples_per_second']['median']:12,.0f}", flush=True)


# --------------------------------------------------------------------------- running them


def machine(gpus: int) -> dict:
    import torch

    return {
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
    }


def run_checks(ctx: Context, chosen: list[Check], results_path: Path, results: dict) -> list[str]:
    """Each check on its own; results.json written after every one."""
    failures = []
    for item in chosen:
        why_not = item.applies(ctx)
        entry = {"doc": item.doc, "verdict": "skipped", "figures": {}, "error": why_not}
        if why_not is None:
            print(f"--- {item.name}: {item.doc}", flush=True)
            started = time.perf_counter()
            try:
                item.run(ctx, entry["figures"])
                entry["verdict"] = "passed"
            except Exception as err:  # recorded; the next check still runs
                entry["verdict"] = "failed"
                entry["error"] = f"{type(err).__name__}: {err}"
                if not isinstance(err, CheckFailed):
                    entry["traceback"] = traceback.format_exc()
                failures.append(item.name)
            entry["seconds"] = round(time.perf_counter() - started, 1)
            print(f"    {entry['verdict']} in {entry['seconds']} s"
                  + (f": {entry['error']}" if entry["error"] else ""), flush=True)  # fmt: skip
        results["checks"][item.name] = entry
        results["failures"] = failures
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    return failures


def parse_args(argv=None) -> argparse.Namespace:
    listing = "\n".join(f"  {c.name:34s} {c.doc}" + (" [quick]" if c.quick else "") for c in CHECKS)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"checks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="results.json and every run")
    parser.add_argument("--quick", action="store_true", help="the checks marked [quick]")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help="these checks (names above)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 3; --quick 2)")
    parser.add_argument("--train-size", type=int, help="synthetic training samples (10000)")
    parser.add_argument(
        "--rehearse-on-cpu",
        type=int,
        metavar="GPUS",
        help="for the CPU test suite: run the checks as if GPUS GPUs were visible, with the "
        "CPU in place of each (tests this script's plumbing, not CUDA)",
    )
    args = parser.parse_args(argv)
    names = {c.name for c in CHECKS}
    unknown = sorted(set(args.only or []) - names)
    if unknown:
        parser.error(f"unknown check(s) {unknown}; see --help for the list")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    gpus = torch.cuda.device_count()
    rehearse = args.rehearse_on_cpu is not None
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = {"command": sys.argv, "quick": args.quick, "checks": {}, "failures": []}
    if gpus == 0 and not rehearse:
        results["machine"] = {"host": platform.node(), "gpus": []}
        results["error"] = "no GPU visible: nothing was run"
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"no GPU visible (torch.cuda.device_count() = 0, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): these checks need one; "
            f"nothing was run ({results_path} says so)",
            file=sys.stderr,
        )
        return 2
    gpus = args.rehearse_on_cpu if rehearse else gpus
    results["machine"] = machine(0 if rehearse else gpus) | {"rehearsal_on_cpu": rehearse}
    from fmnist.data.synthetic import write_synthetic

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)  # runs of an earlier check are not reused
    data = work / "data"
    train_size = args.train_size or (4000 if args.quick else 10000)
    write_synthetic(data, train_size, 2000, seed=0)
    epochs = args.epochs or (2 if args.quick else 3)
    ctx = Context(work, data, epochs, gpus, rehearse, args.quick)
    wanted = set(args.only) if args.only else {c.name for c in CHECKS if c.quick or not args.quick}
    chosen = [c for c in CHECKS if c.name in wanted]
    started = time.perf_counter()
    failures = run_checks(ctx, chosen, results_path, results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    passed = sum(e["verdict"] == "passed" for e in results["checks"].values())
    print(f"{passed} passed, {len(failures)} failed {failures or ''} in {results['seconds']} s; "
          f"{results_path}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
