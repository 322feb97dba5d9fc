#!/usr/bin/env python3
"""Time the distributed engine (one process per stage) against the single-process engine.

Both engines run as they do in the workflow: each variant is a real train.py run in its
own subprocess (--engine distributed starts one process per stage with torchrun, gloo
between them; --engine single_process is one process), on the same data, model, seed and
batches, with one torch thread per process. The variants are interleaved over
--repetitions rounds (the machine's speed drifts; odd rounds run them in reverse order),
and each figure is reported as the best and the median over the rounds.

Variants, for every model in --models (hidden sizes joined by +; two stages, split by
FLOPs as train.py does):

  single autograd m1   single_process, --cpu-step autograd, the whole batch at once
  single autograd mM   the same with --microbatches M: the distributed runs' arithmetic
  single kernels m1    the default hand-written step (only where train.py has it: the
                       tutorial's two-layer layout)
  distributed S mM     --engine distributed --schedule S --microbatches M, for each M in
                       --microbatches and S in --schedules, 1 thread per stage process

Throughput is epochs.csv's: training samples / training seconds (evaluation excluded),
over the epochs after the first --warmup-epochs. Speedups are given against the
single-process run with the same M (same numbers) and against the fastest single-process
variant of the model (by median), each as median/median and as the median of per-round
ratios; the goal (>= 1.5x) is judged on the median of per-round ratios, against both.
The same two processes check the machine: a 1-thread matmul alone, then both at once
(two free CPUs give 2x), and the CPUs' use by other processes is sampled before each run.

Pipeline figures per distributed variant, from its timeline.csv (4 steps of epoch 1,
fmnist.bubble): the measured idle fraction beside the GPipe formula (K-1)/(M+K-1) and the
speedup bound it implies, K*M/(M+K-1); the step's span, each stage's compute, and the span
of a zero-latency replay (the measured passes in the measured order, each starting as soon
as its stage and its input are free): span - replay is the time the step loses to
transfers and waits. Each rank's timeline clock starts when a barrier releases it, which
can be milliseconds apart; where the recorded times have a receive before its send, stage
1's times are shifted by the smallest offset that puts every receive after its send, and
the idle fraction is given aligned and as recorded. Communication is also measured
directly: each round, two gloo processes (1 thread each, torch.multiprocessing) send one
micro-batch's activation (batch/M rows x the boundary width, float32) and return a
gradient of that shape, many times (median round trip), and all-reduce one int64 (the
engine's per-step stop vote); per step that is M round trips + 1 all-reduce.

Checks that the variants are the same run: epochs.csv's epoch, train_loss, test_loss and
test_accuracy must be identical (as text) between single autograd mM and every
distributed mM, in every round ("numbers identical: yes/no"; exit status 1 if no).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fmnist import bubble, idx, settings, synthetic
from fmnist.run_record import package_version

SCRIPTS = Path(__file__).resolve().parent
TRAIN = SCRIPTS / "train.py"
STAGES = 2
DEVICES = ["cpu"] * STAGES
METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]
GOAL = 1.5
DEFAULT_MODELS = ["1024+1024+1024", "256+1024+768+1536", "200"]
TUTORIAL = (200,)

# ---------------------------------------------------------------------- models


def parse_model(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.replace(",", "+").split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give hidden sizes joined by +") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: hidden sizes must be positive")
    return sizes


def label(hidden: tuple[int, ...]) -> str:
    return "+".join(map(str, hidden))


def model_params(hidden: tuple[int, ...]) -> dict:
    return {"hidden_sizes": list(hidden), "stage_split": "flops", "devices": DEVICES}


def model_info(hidden: tuple[int, ...]) -> dict:
    """Layers, the FLOPs split train.py uses, and each stage's share of the FLOPs.

    forward: 2*in*out per Linear (what train.py balances); training: forward + weight
    gradient + input gradient (none for the first layer: the data needs none).
    """
    params = model_params(hidden)
    flops = settings.layer_flops(params)
    split = settings.stage_split(params)
    bounds = [sum(split[:s]) for s in range(STAGES + 1)]
    forward = [sum(flops[bounds[s] : bounds[s + 1]]) for s in range(STAGES)]
    train = [2 * flops[0]] + [3 * f for f in flops[1:]]
    training = [sum(train[bounds[s] : bounds[s + 1]]) for s in range(STAGES)]
    widths = [idx.IMAGE_SIDE * idx.IMAGE_SIDE, *hidden, idx.NUM_CLASSES]
    return {
        "hidden_sizes": list(hidden),
        "layer_flops_per_sample": flops,
        "stage_split": split,
        "forward_flops_per_stage": forward,
        "forward_share": [f / sum(forward) for f in forward],
        "training_flops_per_stage": training,
        "training_share": [f / sum(training) for f in training],
        "boundary_width": widths[split[0]],
    }


# -------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    hidden: tuple[int, ...]
    engine: str  # single_process or distributed
    microbatches: int
    schedule: str | None = None  # distributed only
    cpu_step: str = "autograd"  # single_process only

    @property
    def model(self) -> str:
        return label(self.hidden)

    @property
    def name(self) -> str:
        if self.engine == "distributed":
            return f"distributed {self.schedule} m{self.microbatches}"
        return f"single {self.cpu_step} m{self.microbatches}"

    @property
    def key(self) -> str:
        return f"{self.model}/{self.name.replace(' ', '_')}"

    def options(self) -> list[str]:
        words = ["--hidden-sizes", *map(str, self.hidden)]
        words += ["--microbatches", str(self.microbatches), "--engine", self.engine]
        if self.engine == "distributed":
            return [*words, "--schedule", self.schedule]
        return [*words, "--cpu-step", self.cpu_step]


def build_variants(args) -> list[Variant]:
    variants = []
    for hidden in args.models:
        variants.append(Variant(hidden, "single_process", 1))
        if hidden == TUTORIAL:
            variants.append(Variant(hidden, "single_process", 1, cpu_step="kernels"))
        variants += [Variant(hidden, "single_process", m) for m in args.microbatches if m != 1]
        variants += [
            Variant(hidden, "distributed", m, schedule)
            for m in args.microbatches
            for schedule in args.schedules
        ]
    return variants


# --------------------------------------------------------------------- one run


class RunFailed(RuntimeError):
    pass


def train_command(variant: Variant, args, data_dir: Path, out_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(TRAIN),
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--devices",
        *DEVICES,
        "--threads",
        "1",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--activation",
        args.activation,
        "--adam-impl",
        args.adam_impl,
        *variant.options(),
    ]


def run_variant(variant: Variant, args, data_dir: Path, out_dir: Path, samples: int) -> dict:
    """Train once; throughput of the timed epochs, metrics and timeline figures."""
    command = train_command(variant, args, data_dir, out_dir)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RunFailed(
            f"{variant.key}: train.py exited {result.returncode}\n"
            f"command: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    with (out_dir / "epochs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    timed = rows[args.warmup_epochs :]
    seconds = sum(float(row["epoch_seconds"]) for row in timed)
    return {
        "samples_per_second": samples * len(timed) / seconds,
        "step_ms": 1e3 * seconds / (len(timed) * -(-samples // args.batch_size)),
        "wall_seconds": wall,
        "metrics": [[row[c] for c in METRICS] for row in rows],
        "timeline": timeline_figures(out_dir / bubble.TIMELINE_FILE, variant),
    }


# ---------------------------------------------------------------- the timeline


def replay_span(step: list) -> float:
    """The span of one step's passes replayed with zero-latency transfers: each pass, in
    its stage's measured order, starts when its stage is free and its input is ready
    (forward of stage s after forward of s-1; backward of s after backward of s+1)."""
    lanes = {}
    for row in sorted(step, key=lambda r: r.start_seconds):
        lanes.setdefault(row.stage, []).append(row)
    last = max(lanes)
    done, free, nxt = {}, dict.fromkeys(lanes, 0.0), dict.fromkeys(lanes, 0)
    while any(nxt[s] < len(lanes[s]) for s in lanes):
        progressed = False
        for s, lane in lanes.items():
            while nxt[s] < len(lane):
                row = lane[nxt[s]]
                if row.phase == "forward":
                    dep = (s - 1, row.microbatch, "forward") if s > 0 else None
                else:
                    dep = (s + 1, row.microbatch, "backward") if s < last else None
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep else 0.0)
                free[s] = done[(s, row.microbatch, row.phase)] = start + (
                    row.end_seconds - row.start_seconds
                )
                nxt[s] += 1
                progressed = True
        if not progressed:
            raise ValueError("the timeline's order contradicts the pipeline's dependencies")
    return max(free.values())


def clock_shifts(timeline) -> list[float]:
    """Per stage, the smallest shift (seconds) of its recorded times against stage 0's
    that puts every receive after its send: forward of (s, m) starts after forward of
    (s-1, m) ends, backward of (s-1, m) starts after backward of (s, m) ends.

    Each rank of the distributed engine starts its timeline clock when a barrier releases
    it, and the ranks are not released at the same instant; the transfers bound the
    offset from both sides (one offset per run: the clocks start once)."""
    keyed = timeline.set_index(["stage", "phase", "step", "microbatch"]).sort_index()
    shifts = [0.0]
    for s in range(1, int(timeline["stage"].max()) + 1):
        before, after = keyed.loc[s - 1], keyed.loc[s]  # true time of s = recorded + shift
        low = (before.loc["forward", "end_seconds"] - after.loc["forward", "start_seconds"]).max()
        high = (
            before.loc["backward", "start_seconds"] - after.loc["backward", "end_seconds"]
        ).min()
        shifts.append(shifts[-1] + min(max(0.0, float(low)), float(high)))
    return shifts


def aligned(timeline, shifts: list[float]):
    out = timeline.copy()
    offset = out["stage"].map(dict(enumerate(shifts)))
    out["start_seconds"] += offset
    out["end_seconds"] += offset
    return out


def spans(timeline):
    steps = timeline.groupby("step")
    return steps["end_seconds"].max() - steps["start_seconds"].min()


def timeline_figures(path: Path, variant: Variant) -> dict:
    """Idle fractions (fmnist.bubble), per-stage compute, span and zero-latency replay;
    for the distributed engine with the stages' clocks aligned (clock_shifts), and the
    idle fraction as recorded beside it."""
    recorded = bubble.read_timeline(path)
    bubble.check_timeline(recorded, variant.microbatches, path)
    distributed = variant.engine == "distributed"
    shifts = clock_shifts(recorded) if distributed else [0.0]
    timeline = aligned(recorded, shifts) if distributed else recorded
    idle = bubble.idle_fractions(timeline, variant.microbatches)
    duration = timeline["end_seconds"] - timeline["start_seconds"]
    busy = duration.groupby([timeline["step"], timeline["stage"]]).sum().unstack(fill_value=0.0)
    span = spans(timeline)
    figures = {
        "idle_fraction": idle.fraction,
        "idle_per_stage": list(idle.per_stage),
        "gpipe_formula": idle.gpipe,
        "steps": len(span),
        "span_ms": 1e3 * float(span.mean()),
        "compute_ms_per_stage": [1e3 * float(busy[s].mean()) for s in sorted(busy.columns)],
        "span_minus_busiest_ms": 1e3 * float((span - busy.max(axis=1)).mean()),
    }
    if distributed:
        as_recorded = bubble.idle_fractions(recorded, variant.microbatches)
        replays = [
            replay_span(list(g.itertuples(index=False))) for _, g in recorded.groupby("step")
        ]
        figures |= {
            "clock_shift_ms": [1e3 * x for x in shifts],
            "idle_fraction_as_recorded": as_recorded.fraction,
            "span_ms_as_recorded": 1e3 * float(spans(recorded).mean()),
            "replay_span_ms": 1e3 * statistics.mean(replays),
            "waits_ms": 1e3 * statistics.mean(s - r for s, r in zip(span, replays)),
        }
    return figures


# ------------------------------------------------------- communication, measured


def _sgemm_rate(rows: int, seconds: float) -> float:
    """GFLOP/s of a 1-thread (rows x 1024) @ (1024 x 1024) matmul, repeated ``seconds``."""
    a, w = torch.randn(rows, 1024), torch.randn(1024, 1024)
    out = torch.empty(rows, 1024)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            torch.mm(a, w, out=out)
        count += 10
    return 2 * rows * 1024 * 1024 * count / (time.perf_counter() - started) / 1e9


def _comm_worker(rank: int, store: str, shapes: list, repeats: int, rows: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        warmup = max(5, repeats // 10)
        result = {"round_trip_seconds": {}, "all_reduce_seconds": []}
        for shape in shapes:
            tensor, times = torch.randn(*shape), []
            for _ in range(warmup + repeats):
                if rank == 0:  # the activation goes to stage 1, its gradient comes back
                    started = time.perf_counter()
                    dist.send(tensor, 1)
                    dist.recv(tensor, 1)
                    times.append(time.perf_counter() - started)
                else:
                    dist.recv(tensor, 0)
                    dist.send(tensor, 0)
            result["round_trip_seconds"]["x".join(map(str, shape))] = times[warmup:]
        flag = torch.zeros(1, dtype=torch.int64)
        for i in range(warmup + repeats):  # the engine's stop vote before every step
            started = time.perf_counter()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            int(flag.item())
            if i >= warmup:
                result["all_reduce_seconds"].append(time.perf_counter() - started)
        # the machine: one process's matmul alone, then both processes' at once
        _sgemm_rate(rows, 0.1)
        dist.barrier()
        alone = _sgemm_rate(rows, 0.5) if rank == 0 else 0.0
        dist.barrier()
        rates = torch.tensor([0.0, 0.0], dtype=torch.float64)
        rates[rank] = _sgemm_rate(rows, 0.5)
        dist.all_reduce(rates)
        result["sgemm_gflops"] = {"alone": alone, "together": rates.tolist()}
        if rank == 0:
            queue.put(result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_comm(shapes: list[tuple[int, int]], repeats: int, rows: int, tmp: Path) -> dict:
    """Round trips of each shape and 1-element all-reduces between two gloo processes, and
    their 1-thread matmul speed alone and together (do the two CPUs give twice one?)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    store = tmp / f"comm-store-{time.monotonic_ns()}"
    workers = [
        context.Process(target=_comm_worker, args=(r, str(store), shapes, repeats, rows, queue))
        for r in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        result = queue.get(timeout=300)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    if any(w.exitcode != 0 for w in workers):
        raise RunFailed(
            f"communication benchmark: worker exit codes {[w.exitcode for w in workers]}"
        )
    return result


def comm_shapes(args) -> dict[tuple[str, int], tuple[int, int]]:
    return {
        (label(h), m): (args.batch_size // m, model_info(h)["boundary_width"])
        for h in args.models
        for m in args.microbatches
    }


# --------------------------------------------------------------------- running


def summarize(values: list[float]) -> dict:
    return {"all": values, "best": max(values), "median": statistics.median(values)}


def prepare_data(args, tmp: Path) -> tuple[Path, dict]:
    if args.data_dir is not None:
        return args.data_dir, {"synthetic": False, "data_dir": str(args.data_dir)}
    data_dir = tmp / "data"
    synthetic.write_synthetic(data_dir, args.train_size, args.test_size, args.data_seed)
    made = {"train_size": args.train_size, "test_size": args.test_size, "seed": args.data_seed}
    return data_dir, {"synthetic": True, **made}


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + fields[4]  # all, idle + iowait


def others_busy(seconds: float = 0.2) -> float | None:
    """The machine's busy fraction over ``seconds`` while this benchmark runs nothing:
    what other processes take (Linux /proc/stat; None elsewhere)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[0] == before[0]:
        return None
    return 1 - (after[1] - before[1]) / (after[0] - before[0])


def run_rounds(args, variants, data_dir: Path, work: Path, samples: int):
    """Every variant once per round (alternating order) and the comm benchmark per round."""
    runs = {v.key: [] for v in variants}
    shapes = comm_shapes(args)
    distinct = sorted(set(shapes.values()))
    comm = {"round_trip_seconds": {}, "all_reduce_seconds": [], "sgemm_gflops": []}
    busy = []
    for rep in range(args.repetitions):
        order = variants if rep % 2 == 0 else variants[::-1]
        for variant in order:
            busy.append(others_busy())
            out_dir = work / f"round{rep + 1}" / variant.key.replace("/", "_")
            run = run_variant(variant, args, data_dir, out_dir, samples)
            runs[variant.key].append(run)
            print(
                f"round {rep + 1}/{args.repetitions}  {variant.model:20s} {variant.name:24s} "
                f"{run['samples_per_second']:9.0f} samples/s  (run {run['wall_seconds']:.1f} s)",
                flush=True,
            )
        measured = measure_comm(distinct, args.comm_repeats, args.batch_size, work)
        comm["sgemm_gflops"].append(measured["sgemm_gflops"])
        for shape, times in measured["round_trip_seconds"].items():
            comm["round_trip_seconds"].setdefault(shape, []).extend(times)
        comm["all_reduce_seconds"].extend(measured["all_reduce_seconds"])
        print(f"round {rep + 1}/{args.repetitions}  communication benchmark done", flush=True)
    return runs, comm, shapes, busy


def median_of(runs: list[dict], *path):
    values = []
    for run in runs:
        value = run
        for part in path:
            value = value[part]
        values.append(value)
    if isinstance(values[0], list):
        return [statistics.median(v) for v in zip(*values)]
    return statistics.median(values)


def ratios(sps: dict, reference: dict) -> dict:
    return {
        "best": sps["best"] / reference["best"],
        "median": sps["median"] / reference["median"],
        "median_of_rounds": statistics.median(a / b for a, b in zip(sps["all"], reference["all"])),
    }


def variant_entries(variants, runs: dict, comm: dict, shapes: dict) -> dict:
    entries = {}
    for v in variants:
        rs = runs[v.key]
        tl = {k: median_of(rs, "timeline", k) for k in rs[0]["timeline"]}
        entries[v.key] = {
            "model": v.model,
            "variant": v.name,
            "engine": v.engine,
            "microbatches": v.microbatches,
            "schedule": v.schedule,
            "cpu_step": v.cpu_step if v.engine == "single_process" else None,
            "samples_per_second": summarize([r["samples_per_second"] for r in rs]),
            "step_ms": summarize([r["step_ms"] for r in rs])
            | {"best": min(r["step_ms"] for r in rs)},
            "run_wall_seconds": summarize([r["wall_seconds"] for r in rs])
            | {"best": min(r["wall_seconds"] for r in rs)},
            "timeline": tl,
            "timeline_per_round": [r["timeline"] for r in rs],
        }
        if v.engine == "distributed":
            k, m = STAGES, v.microbatches
            shape = shapes[(v.model, m)]
            rtt = statistics.median(comm["round_trip_seconds"]["x".join(map(str, shape))])
            vote = statistics.median(comm["all_reduce_seconds"])
            entries[v.key]["bubble_speedup_bound"] = k * m / (m + k - 1)
            entries[v.key]["comm_microbenchmark"] = {
                "boundary_shape": list(shape),
                "round_trip_ms": 1e3 * rtt,
                "all_reduce_ms": 1e3 * vote,
                "per_step_ms": 1e3 * (m * rtt + vote),
                "transfers_per_step": 2 * m,
            }
    # speedups: against the same-M single-process run and the model's fastest one
    for v in variants:
        entry = entries[v.key]
        same = entries.get(f"{v.model}/single_autograd_m{v.microbatches}")
        singles = [
            e for e in entries.values() if e["model"] == v.model and e["engine"] != "distributed"
        ]
        fastest = max(singles, key=lambda e: e["samples_per_second"]["median"])
        sps = entry["samples_per_second"]
        entry["speedup_vs_same_microbatches"] = (
            ratios(sps, same["samples_per_second"]) if same is not None else None
        )
        entry["speedup_vs_fastest_single"] = ratios(sps, fastest["samples_per_second"])
        entry["fastest_single"] = fastest["variant"]
    return entries


def identity_checks(variants, runs: dict) -> dict:
    """Metric columns identical between single autograd mM and distributed mM (all rounds)."""
    pairs = []
    for v in variants:
        if v.engine != "distributed":
            continue
        reference = f"{v.model}/single_autograd_m{v.microbatches}"
        theirs = [r["metrics"] for r in runs[reference]]
        ours = [r["metrics"] for r in runs[v.key]]
        same = all(m == theirs[0] for m in theirs + ours)
        pairs.append({"variant": v.key, "reference": reference, "identical": same})
    kernels = []
    for v in variants:
        if v.cpu_step == "kernels" and v.engine == "single_process":
            reference = f"{v.model}/single_autograd_m1"
            same = all(
                r["metrics"] == runs[reference][0]["metrics"] for r in runs[v.key] + runs[reference]
            )
            kernels.append({"variant": v.key, "reference": reference, "identical": same})
    return {
        "columns": METRICS,
        "identical": all(p["identical"] for p in pairs),
        "pairs": pairs,
        "kernels_vs_autograd": kernels,
    }


def goal_verdicts(args, entries: dict) -> dict:
    """Per model and reference, the GPipe variant (the issue's goal: GPipe, M >= 4) and
    the variant of any schedule with the highest median of per-round ratios, and whether
    each reaches GOAL."""
    verdicts = {}
    for hidden in args.models:
        model = label(hidden)
        candidates = [
            e
            for e in entries.values()
            if e["model"] == model and e["engine"] == "distributed" and e["microbatches"] >= 4
        ]
        verdicts[model] = {}
        for reference in ("fastest_single", "same_microbatches"):
            verdicts[model][reference] = {}
            for scope in ("gpipe", "any"):
                pool = [e for e in candidates if scope == "any" or e["schedule"] == scope]
                if not pool:
                    continue
                best = max(pool, key=lambda e: e[f"speedup_vs_{reference}"]["median_of_rounds"])
                speedup = best[f"speedup_vs_{reference}"]["median_of_rounds"]
                against = (
                    best["fastest_single"]
                    if reference == "fastest_single"
                    else f"single autograd m{best['microbatches']}"
                )
                verdicts[model][reference][scope] = {
                    "best_variant": best["variant"],
                    "against": against,
                    "speedup": speedup,
                    "met": speedup >= GOAL,
                }
    return {
        "goal": GOAL,
        "judged_on": "median of per-round ratios, distributed variants with M >= 4; gpipe: "
        "the issue's goal (GPipe), any: either schedule; fastest_single: against the model's "
        "fastest single-process variant (what switching engines gains); same_microbatches: "
        "against single autograd with the same M (the reference of the bubble bound)",
        "models": verdicts,
    }


QUIET = 0.1


def quietness(busy: list) -> dict:
    """What other processes took of the CPUs in the 0.2 s before each run."""
    known = [b for b in busy if b is not None]
    return {
        "what": "busy fraction of all CPUs in the 0.2 s before each run, while the benchmark "
        "ran nothing (other processes' load)",
        "before_each_run": busy,
        "median": statistics.median(known) if known else None,
        "max": max(known) if known else None,
        "quiet": bool(known) and statistics.median(known) < QUIET,
    }


def machine_check(rounds: list[dict], rows: int) -> dict:
    """Two 1-thread processes' matmul throughput together, against one alone."""
    alone = [r["alone"] for r in rounds]
    together = [sum(r["together"]) for r in rounds]
    return {
        "what": f"1-thread ({rows} x 1024) @ (1024 x 1024) float32 matmul, 0.5 s, in the "
        "two communication processes: rank 0 alone, then both at once",
        "alone_gflops": summarize(alone),
        "together_gflops": summarize(together),
        "scaling": summarize([t / a for t, a in zip(together, alone)]),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return {
        "hostname": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gloo": dist.is_gloo_available(),
        "numpy": package_version("numpy"),
        "python": platform.python_version(),
    }


def benchmark(args, argv: list[str]) -> dict:
    variants = build_variants(args)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fmnist-benchmark-pipeline-") as tmp:
        tmp = Path(tmp)
        work = args.keep_runs or tmp / "runs"
        data_dir, data_source = prepare_data(args, tmp)
        samples = len(idx.load_split(data_dir, "train")[1])
        runs, comm, shapes, busy = run_rounds(args, variants, data_dir, work, samples)
    entries = variant_entries(variants, runs, comm, shapes)
    return {
        "command": ["workflow/scripts/benchmark_pipeline.py", *argv],
        "settings": {
            "models": [list(h) for h in args.models],
            "microbatches": args.microbatches,
            "schedules": args.schedules,
            "stages": STAGES,
            "devices": DEVICES,
            "threads_per_process": 1,
            **{k: getattr(args, k) for k in ("epochs", "warmup_epochs", "repetitions")},
            **{k: getattr(args, k) for k in ("batch_size", "lr", "seed", "activation")},
            "adam_impl": args.adam_impl,
            "comm_repeats": args.comm_repeats,
            "data": data_source,
            "train_samples": samples,
        },
        "environment": environment(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "others_busy": quietness(busy),
        "machine_check": machine_check(comm["sgemm_gflops"], args.batch_size),
        "models": {label(h): model_info(h) for h in args.models},
        "variants": entries,
        "communication": {
            "how": "two gloo processes, 1 thread each: send a (batch/M x boundary width) "
            "float32 tensor and receive one back (activation + gradient), median of "
            "--comm-repeats per round; all-reduce of one int64 (the stop vote)",
            "round_trip_ms": {
                s: 1e3 * statistics.median(t) for s, t in comm["round_trip_seconds"].items()
            },
            "all_reduce_ms": 1e3 * statistics.median(comm["all_reduce_seconds"]),
        },
        "identity": identity_checks(variants, runs),
        "goal": goal_verdicts(args, entries),
    }


# ----------------------------------------------------------------------- table


def quiet_line(busy: dict) -> str:
    if busy["median"] is None:
        return "other processes' CPU use: unknown (no /proc/stat)"
    verdict = "quiet" if busy["quiet"] else "NOT QUIET: the figures are disturbed"
    return (
        f"other processes' CPU use before each run: median {100 * busy['median']:.0f}%, "
        f"max {100 * busy['max']:.0f}% of the CPUs ({verdict})"
    )


def share(values: list[float]) -> str:
    return " | ".join(f"{100 * v:.0f}%" for v in values)


def table(report: dict) -> str:
    s = report["settings"]
    env = report["environment"]
    lines = [
        f"machine: {env['cpu']}, {env['cpus_available']} CPUs available, torch {env['torch']}; "
        f"load average {report['load_average']['start'][0]:.2f} at start, "
        f"{report['load_average']['end'][0]:.2f} at end",
        quiet_line(report["others_busy"]),
        f"machine check: {report['machine_check']['what']}: "
        f"{report['machine_check']['alone_gflops']['median']:.0f} GFLOP/s alone, "
        f"{report['machine_check']['together_gflops']['median']:.0f} together "
        f"({report['machine_check']['scaling']['median']:.2f}x; medians of the rounds)",
        f"{s['train_samples']} training samples, batch {s['batch_size']}, {s['epochs']} epochs "
        f"({s['warmup_epochs']} warm-up excluded), {s['repetitions']} interleaved rounds, "
        f"1 thread per process, {s['stages']} stages on the CPU, activation {s['activation']}",
        "samples/s: best and median of the rounds; x same-M: median of per-round ratios to "
        "single autograd with the same M (same numbers); x fastest: to the model's fastest "
        "single-process variant (median/median, median of per-round ratios)",
    ]
    for model, info in report["models"].items():
        lines += [
            "",
            f"model {model}: layers per stage {info['stage_split']}, boundary width "
            f"{info['boundary_width']}; FLOPs per stage: forward {share(info['forward_share'])}, "
            f"training {share(info['training_share'])} "
            f"({sum(info['training_flops_per_stage']):,} training FLOPs/sample)",
            f"  {'variant':24s} {'best':>8s} {'median':>8s} {'x same-M':>8s} "
            f"{'x fastest':>15s} {'run s':>6s}",
        ]
        entries = [e for e in report["variants"].values() if e["model"] == model]
        for e in entries:
            sps, fast = e["samples_per_second"], e["speedup_vs_fastest_single"]
            same = e["speedup_vs_same_microbatches"]
            same_text = f"{same['median_of_rounds']:8.2f}" if same else f"{'-':>8s}"
            lines.append(
                f"  {e['variant']:24s} {sps['best']:8.0f} {sps['median']:8.0f} {same_text} "
                f"{fast['median']:7.2f} {fast['median_of_rounds']:7.2f} "
                f"{e['run_wall_seconds']['median']:6.1f}"
            )
        lines += [
            "  pipeline (timeline.csv, 4 steps of epoch 1; medians of the rounds), ms per step:",
            f"  {'variant':24s} {'idle':>5s} {'(rec)':>5s} {'GPipe':>5s} {'bound':>5s} "
            f"{'shift':>5s} {'step':>6s} {'span':>6s} {'compute s0|s1':>13s} {'replay':>6s} "
            f"{'waits':>6s} {'comm':>6s}",
        ]
        for e in entries:
            t = e["timeline"]
            compute = "|".join(f"{c:.2f}" for c in t["compute_ms_per_stage"])
            if e["engine"] == "distributed":
                cells = [
                    f"{t['idle_fraction']:5.2f}",
                    f"{t['idle_fraction_as_recorded']:5.2f}",
                    f"{t['gpipe_formula']:5.2f}",
                    f"{e['bubble_speedup_bound']:5.2f}",
                    f"{t['clock_shift_ms'][-1]:5.2f}",
                    f"{e['step_ms']['median']:6.2f}",
                    f"{t['span_ms']:6.2f}",
                    f"{compute:>13s}",
                    f"{t['replay_span_ms']:6.2f}",
                    f"{t['waits_ms']:6.2f}",
                    f"{e['comm_microbenchmark']['per_step_ms']:6.2f}",
                ]
            else:
                cells = [f"{t['idle_fraction']:5.2f}", *[f"{'-':>5s}"] * 4]
                cells += [f"{e['step_ms']['median']:6.2f}", f"{t['span_ms']:6.2f}"]
                cells += [f"{compute:>13s}", *[f"{'-':>6s}"] * 3]
            lines.append(f"  {e['variant']:24s} " + " ".join(cells))
    comm = report["communication"]
    lines += [
        "",
        "idle: measured idle fraction (fmnist.bubble) with the stages' clocks aligned; (rec): "
        "as timeline.csv records it; GPipe: (K-1)/(M+K-1); bound: the speedup it allows, "
        "K*M/(M+K-1); shift: stage 1's clock offset in timeline.csv (ms; the smallest that "
        "puts every receive after its send); step: training ms per step (epochs.csv); span: "
        "first pass start to last pass end of a step; compute: each stage's passes; replay: "
        "the span with zero-latency transfers; waits: span - replay (transfers, the schedule's "
        "own work between passes, wake-ups, on the critical path)",
        "comm (measured directly, two idle gloo processes): M x round trip of one "
        "micro-batch's activation + gradient, + 1 all-reduce (stop vote); round trips: "
        + ", ".join(f"{shape} {ms:.3f} ms" for shape, ms in comm["round_trip_ms"].items())
        + f"; all-reduce {comm['all_reduce_ms']:.3f} ms",
        "",
    ]
    identity = report["identity"]
    lines.append(
        f"numbers identical: {'yes' if identity['identical'] else 'no'} "
        f"({', '.join(identity['columns'])} of epochs.csv, single autograd mM vs distributed mM, "
        f"every round)"
    )
    for pair in identity["pairs"]:
        if not pair["identical"]:
            lines.append(f"  DIFFERENT: {pair['variant']} vs {pair['reference']}")
    for pair in identity["kernels_vs_autograd"]:
        lines.append(
            f"kernels step identical to autograd ({pair['variant']}): "
            f"{'yes' if pair['identical'] else 'no'}"
        )
    goal = report["goal"]
    for model, verdicts in goal["models"].items():
        for reference, scopes in verdicts.items():
            parts = [
                f"{'GPipe' if scope == 'gpipe' else 'any schedule'}: {v['best_variant']} "
                f"{v['speedup']:.2f}x {v['against']} ({'met' if v['met'] else 'not met'})"
                for scope, v in scopes.items()
            ]
            lines.append(
                f"goal >= {goal['goal']}x, model {model}, vs {reference.replace('_', ' ')}: "
                + "; ".join(parts)
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------- CLI


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1]
        + "\nExample: python workflow/scripts/benchmark_pipeline.py --repetitions 3 "
        "--out results/benchmark_pipeline.json",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four FashionMNIST .gz files; default: generate synthetic "
        "data of --train-size/--test-size",
    )
    parser.add_argument("--train-size", type=positive, default=2000)
    parser.add_argument(
        "--test-size", type=positive, default=200, help="evaluation is not timed, but runs"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--models",
        type=parse_model,
        nargs="+",
        default=[parse_model(m) for m in DEFAULT_MODELS],
        help="hidden sizes of each model, joined by + (default: "
        + " ".join(DEFAULT_MODELS)
        + ": the issue's, one whose FLOPs split near evenly, the tutorial's)",
    )
    parser.add_argument(
        "--microbatches",
        type=positive,
        nargs="+",
        default=[4, 10],
        help="micro-batch counts M of the distributed runs; each must divide --batch-size "
        "(default: 4 10; 8 does not divide 100)",
    )
    parser.add_argument(
        "--schedules", nargs="+", choices=["gpipe", "1f1b"], default=["gpipe", "1f1b"]
    )
    parser.add_argument("--epochs", type=positive, default=2, help="epochs per run")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="first epochs left out of samples/s (they include start-up and the timeline "
        "recording)",
    )
    parser.add_argument("--repetitions", type=positive, default=2, help="interleaved rounds")
    parser.add_argument("--batch-size", type=positive, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--activation",
        choices=["log_softmax", "relu"],
        default="log_softmax",
        help="as train.py's, for every model (default: the tutorial's log_softmax)",
    )
    parser.add_argument(
        "--adam-impl",
        choices=["for_loop", "foreach", "fused"],
        default="for_loop",
        help="as train.py's, for every run (default: train.py's for_loop)",
    )
    parser.add_argument(
        "--comm-repeats",
        type=positive,
        default=300,
        help="round trips per shape in each round's communication benchmark",
    )
    parser.add_argument(
        "--keep-runs", type=Path, help="keep the run folders here (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error("--warmup-epochs must be at least 0 and below --epochs")
    bad = [m for m in args.microbatches if args.batch_size % m]
    if bad:
        parser.error(
            f"--microbatches {bad} do not divide --batch-size {args.batch_size}: the "
            "distributed engine needs equal micro-batches"
        )
    if args.keep_runs is not None and args.keep_runs.exists() and any(args.keep_runs.iterdir()):
        parser.error(f"--keep-runs {args.keep_runs} is not empty (train.py would resume)")
    args.microbatches = sorted(set(args.microbatches))
    args.models = list(dict.fromkeys(args.models))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        report = benchmark(args, argv)
    except RunFailed as err:
        print(f"benchmark_pipeline.py: error: {err}", file=sys.stderr)
        return 2
    print()
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["identity"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
