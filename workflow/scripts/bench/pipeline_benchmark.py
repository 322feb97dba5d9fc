"""What benchmark_pipeline.py does: every variant (bench.pipeline_variants) run round by
round, interleaved, with gloo's costs measured directly each round, and the report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fmnist.data import idx

from bench import gloo_timing
from bench.common import prepare_data
from bench.machine import environment, others_busy, quietness
from bench.pipeline_results import goal_verdicts, identity_checks, variant_entries
from bench.pipeline_variants import (
    DEVICES,
    STAGES,
    build_variants,
    label,
    model_info,
    run_variant,
)


def run_rounds(args, variants, data_dir: Path, work: Path, samples: int):
    """Every variant once per round (alternating order) and the comm benchmark per round."""
    runs = {v.key: [] for v in variants}
    shapes = gloo_timing.comm_shapes(args)
    distinct = sorted(set(shapes.values()))
    measured, busy = [], []
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
        measured.append(
            gloo_timing.measure_comm(distinct, args.comm_repeats, args.batch_size, work)
        )
        print(f"round {rep + 1}/{args.repetitions}  communication benchmark done", flush=True)
    return runs, gloo_timing.combine_rounds(measured), shapes, busy


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
        "machine_check": gloo_timing.machine_check(comm["sgemm_gflops"], args.batch_size),
        "models": {label(h): model_info(h) for h in args.models},
        "variants": entries,
        "communication": gloo_timing.communication(comm),
        "identity": identity_checks(variants, runs),
        "goal": goal_verdicts([label(h) for h in args.models], entries),
    }
