"""What benchmark_pipeline.py compares: the models, the variants of each, and one real
train.py run of a variant (its throughput, metrics and timeline figures).

Every variant is a train.py subprocess on the CPU, one torch thread per process, two
processes for the distributed engine (a stage each, or two each for the schedules that hold
several: four stages then), so that the engines are timed as the workflow runs them.
Imports no torch: train.py trains in its own process.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fmnist.config import stages
from fmnist.config.stages import SCHEDULE_PLACEMENT
from fmnist.data import idx
from fmnist.rundir import runfiles

from bench.pipeline_timing import timeline_figures

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
STAGES = 2
DEVICES = ["cpu"] * STAGES
METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]
"""epochs.csv's columns that must be identical between engines doing the same arithmetic."""
TUTORIAL = (200,)
"""The only layout train.py's hand-written kernel step supports."""


class RunFailed(RuntimeError):
    """A train.py run or the communication benchmark failed; the message says how."""


# ---------------------------------------------------------------------- models


def parse_model(text: str) -> tuple[int, ...]:
    """Hidden sizes joined by + (or commas), for argparse."""
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
    flops = stages.layer_flops(params)
    split = stages.stage_split(params)
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
    stages_per_process: int = 1  # distributed only: 2 for the looped and V schedules

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
            spp = ["--stages-per-process", str(self.stages_per_process)]
            return [*words, "--schedule", self.schedule, *spp]
        return [*words, "--cpu-step", self.cpu_step]


def build_variants(args) -> list[Variant]:
    """Per model: single autograd m1, single kernels m1 (the tutorial's layout only),
    single autograd mM and distributed S mM for every M and schedule S."""
    variants = []
    for hidden in args.models:
        variants.append(Variant(hidden, "single_process", 1))
        if hidden == TUTORIAL:
            variants.append(Variant(hidden, "single_process", 1, cpu_step="kernels"))
        variants += [Variant(hidden, "single_process", m) for m in args.microbatches if m != 1]
        variants += [
            Variant(hidden, "distributed", m, schedule, stages_per_process=per_process)
            for m in args.microbatches
            for schedule in args.schedules
            if (per_process := 1 if SCHEDULE_PLACEMENT[schedule] == "one" else 2) == 1
            or len(hidden) + 1 >= STAGES * per_process  # a layer per stage at least
        ]
    return variants


# --------------------------------------------------------------------- one run


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
    # Local processes within this benchmark's own allocation, on the CPU: under SLURM,
    # train.py would otherwise start its stages with srun, as one task each.
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["CUDA_VISIBLE_DEVICES"] = ""
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
    timeline = timeline_figures(
        out_dir / runfiles.TIMELINE_FILE, variant.microbatches, variant.engine == "distributed"
    )
    return {
        "samples_per_second": samples * len(timed) / seconds,
        "step_ms": 1e3 * seconds / (len(timed) * -(-samples // args.batch_size)),
        "wall_seconds": wall,
        "metrics": [[row[c] for c in METRICS] for row in rows],
        "timeline": timeline,
    }
