import itertools
import math
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Scripts run from the checkout (not a copy) so that they can import their sibling modules.
SCRIPTS_DIR = Path(workflow.basedir, "workflow", "scripts")
sys.path.insert(0, str(SCRIPTS_DIR))
from fashion_mnist import FILE_NAMES as FASHION_MNIST_FILES  # numpy only, no torch

SYNTHETIC_MIRROR = "resources/synthetic_fashion_mnist_mirror"
TRAIN_RESOURCES = config["resources"]["train_model_parallel"]


def format_value(value):
    """A parameter value as it appears in a run id: short, stable, filesystem-safe."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "+".join(format_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", str(value))


def run_id(swept_values):
    """`lr=0.001_seed=2` from {"lr": 0.001, "seed": 2}; keys sorted, so ids are stable."""
    if not swept_values:
        return "base"
    return "_".join(
        f"{k}={format_value(swept_values[k])}" for k in sorted(swept_values)
    )


# Keys the schema types as integers: JSON Schema also accepts 2.0 for them.
INTEGER_KEYS = {
    "epochs",
    "batch_size",
    "hidden_size",
    "seed",
    "microbatches",
    "train_size",
    "test_size",
    "gpu",
    "cpus_per_task",
    "mem_mb",
    "runtime",
    "signal_seconds",
}


def check_numbers(value, key):
    """What JSON Schema lets through: NaN and infinity, and integers written as 2.0."""
    if isinstance(value, dict):
        for name, item in value.items():
            check_numbers(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            check_numbers(item, key)
    elif isinstance(value, float) and not math.isfinite(value):
        raise WorkflowError(f"config key {key}: {value} is not a finite number")
    elif isinstance(value, float) and key.rpartition(".")[2] in INTEGER_KEYS:
        raise WorkflowError(f"config key {key}: {value} must be written as an integer")


def build_runs(train, sweep):
    """{run id: parameters} for the Cartesian product of the sweep over the base settings."""
    keys = list(sweep)
    runs, swept = {}, {}
    for combination in itertools.product(*(sweep[k] for k in keys)):
        swept_values = dict(zip(keys, combination))
        params = {**train, **swept_values}
        name = run_id(swept_values)
        if name in runs:
            raise WorkflowError(
                f"sweep: values {swept_values} and {swept[name]} give the same run id {name!r}"
            )
        swept[name] = swept_values
        if params["microbatches"] > params["batch_size"]:
            raise WorkflowError(
                f"run {name}: train.microbatches ({params['microbatches']}) exceeds "
                f"train.batch_size ({params['batch_size']})"
            )
        runs[name] = params
    return runs


def check_time_limit(resources):
    """Refuse a time limit that leaves a job no time to train before it must leave."""
    work = resources["runtime"] * 60 - resources["signal_seconds"]
    if work < 30:
        raise WorkflowError(
            f"resources.train_model_parallel.runtime ({resources['runtime']} min) leaves "
            f"{work} s of training before signal_seconds ({resources['signal_seconds']} s): "
            "a job needs at least 30 s. Raise runtime or lower signal_seconds."
        )


check_numbers(config, "")
RUNS = build_runs(config["train"], config["sweep"])
check_time_limit(TRAIN_RESOURCES)


def script_path(name):
    """Relative to the working directory, so that a clone elsewhere reruns nothing."""
    return os.path.relpath(SCRIPTS_DIR / name)


def data_files():
    return [f"{config['data']['dir']}/{name}" for name in FASHION_MNIST_FILES]


def synthetic_mirror_files():
    if config["data"]["synthetic"] is None:
        return []
    return [f"{SYNTHETIC_MIRROR}/{name}" for name in FASHION_MNIST_FILES + ["MD5SUMS"]]


def download_arguments(wildcards, input):
    """Mirrors and expected sums for the download script."""
    if input.mirror:
        return f"--mirror {SYNTHETIC_MIRROR} --md5-file {SYNTHETIC_MIRROR}/MD5SUMS"
    mirrors = " ".join(f"--mirror {shlex.quote(m)}" for m in config["data"]["mirrors"])
    sums = " ".join(
        f"--md5 {name}={value}" for name, value in config["data"]["md5"].items()
    )
    return f"{mirrors} {sums} --timeout {config['data']['timeout_seconds']}"


def train_arguments(wildcards):
    """The training script's options for one run."""
    params = RUNS[wildcards.run]
    devices = params["devices"]
    args = [
        f"--devices {' '.join(devices) if isinstance(devices, list) else devices}",
        f"--epochs {params['epochs']}",
        f"--batch-size {params['batch_size']}",
        f"--lr {params['lr']!r}",
        f"--hidden-size {params['hidden_size']}",
        f"--seed {params['seed']}",
        f"--microbatches {params['microbatches']}",
        f"--adam-impl {params['adam_impl']}",
        f"--run-id {wildcards.run}",
        f"--swept {' '.join(sorted(config['sweep']))}",
    ]
    if params["tutorial_double_scaling"]:
        args.append("--tutorial-double-scaling")
    return " ".join(args)


def train_scheduler_resources():
    """What SLURM is asked for per training job; optional keys only when set."""
    extra = {
        key: TRAIN_RESOURCES[key]
        for key in ("gpu_model", "constraint")
        if TRAIN_RESOURCES[key] is not None
    }
    return {
        "gpu": TRAIN_RESOURCES["gpu"],
        "cpus_per_task": TRAIN_RESOURCES["cpus_per_task"],
        "mem_mb": TRAIN_RESOURCES["mem_mb"],
        "runtime": TRAIN_RESOURCES["runtime"],
        # Read by the script, not by SLURM; a resource, so changing it reruns nothing.
        "signal_seconds": TRAIN_RESOURCES["signal_seconds"],
        # SIGURG is ignored by every process but the training script, which checkpoints.
        "slurm_extra": f"--signal=URG@{TRAIN_RESOURCES['signal_seconds']}",
        **extra,
    }


def run_outputs(name):
    return expand("results/runs/{run}/{file}", run=RUNS, file=[name])
