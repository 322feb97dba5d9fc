"""The checks of a configuration that no schema entry can state, as plain functions: the
rules between training settings, a run against the memory its job asks for, the sweep, the
time limit and the data folder. Each raises SettingError naming the key; workflow/rules/
common.smk turns it into Snakemake's error before any job, train.py into exit 2.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
import urllib.request

from fmnist.config import settings
from fmnist.config.settings import SettingError, check_number, check_value
from fmnist.config.stages import (
    SCHEDULE_PLACEMENT,
    layer_shapes,
    process_count,
    stage_count,
    stages_per_process,
)
from fmnist.data.idx import IMAGE_SIDE, NUM_CLASSES


def check_stages(params: dict) -> None:
    layers = len(layer_shapes(params))
    model = f"train.hidden_sizes {params['hidden_sizes']} makes {layers} layers"
    split, devices = params["stage_split"], params["devices"]
    if isinstance(split, list):
        if sum(split) != layers:
            raise SettingError(f"train.stage_split {split} assigns {sum(split)} layers; {model}")
        per_process = stages_per_process(params)
        if (
            isinstance(devices, list)
            and len(devices) > 1
            and len(devices) * per_process != len(split)
        ):
            each = "process" if per_process > 1 else "stage"
            raise SettingError(
                f"train.devices lists {len(devices)} devices but train.stage_split {split} "
                f"makes {len(split)} stages"
                + (f" in processes of {per_process}" if per_process > 1 else "")
                + f": give one device per {each} (or one for all)"
            )
    elif stage_count(params) > layers:
        raise SettingError(
            f"train.devices lists {len(devices)} devices, one per stage, but {model}: "
            f"a stage needs at least one layer"
        )


def check_run_params(params: dict) -> None:
    """The rules between settings that no single schema entry can state."""
    if params["microbatches"] > params["batch_size"]:
        raise SettingError(
            f"train.microbatches ({params['microbatches']}) exceeds "
            f"train.batch_size ({params['batch_size']})"
        )
    check_stages(params)
    if params["engine"] == "distributed":
        check_distributed(params)


def check_distributed(params: dict) -> None:
    """What the distributed engine needs: stages to put in processes, and equal
    micro-batches (a pipeline stage receives tensors of the one shape it was set up for)."""
    check_schedule(params)
    if process_count(params) < 2:
        stages, per_process = stage_count(params), stages_per_process(params)
        raise SettingError(
            f"train.engine distributed needs two processes or more, but this model's {stages} "
            f"stage(s), {per_process} per process, make one: list a device per process in "
            "train.devices or give train.stage_split"
        )
    devices = params["devices"]
    if devices != "auto" and len({name.split(":")[0] for name in devices}) > 1:
        raise SettingError(
            f"train.engine distributed needs every stage on the same kind of device "
            f"(its processes talk over NCCL between GPUs or gloo between CPUs), got {devices}"
        )
    check_one_gpu_per_process(devices, process_count(params))
    batch, micro = params["batch_size"], params["microbatches"]
    if batch % micro:
        raise SettingError(
            f"train.engine distributed needs train.batch_size ({batch}) to be a multiple "
            f"of train.microbatches ({micro}): every micro-batch has the same size"
        )


def check_schedule(params: dict) -> None:
    """What each of torch.distributed.pipelining's schedules asks of the stages per process
    and of the micro-batches (its own checks, stated before any process starts)."""
    schedule, per_process = params["schedule"], stages_per_process(params)
    placement = SCHEDULE_PLACEMENT[schedule]
    wanted = {"one": "1", "loop": "2 or more", "v": "2"}[placement]
    if (placement == "one") != (per_process == 1) or (placement == "v" and per_process != 2):
        raise SettingError(
            f"train.schedule {schedule} runs {wanted} stages per process, but "
            f"train.stages_per_process is {per_process}"
        )
    stages, micro = stage_count(params), params["microbatches"]
    processes = max(1, process_count(params))
    if schedule in ("1f1b", "dual_pipe_v") and micro < stages:
        raise SettingError(
            f"train.schedule {schedule} needs at least as many micro-batches as stages "
            f"({stages}), but train.microbatches is {micro}"
        )
    rounds = max(1, micro // processes)
    if schedule in ("interleaved_1f1b", "interleaved_zero_bubble") and micro % rounds:
        raise SettingError(
            f"train.schedule {schedule} needs train.microbatches ({micro}) to be a multiple "
            f"of its rounds, microbatches // processes = {rounds}: e.g. a multiple of {processes}"
        )


def check_one_gpu_per_process(devices, stages: int) -> None:
    """The distributed engine's processes each need a GPU of their own (NCCL allows one
    process per GPU): refuse a list that names one GPU for two stages. (A bare cuda is each
    process's own GPU; whether enough are visible is checked where the processes start.)"""
    if devices == "auto":
        return
    named = [d for d in (devices * stages if len(devices) == 1 else devices) if ":" in d]
    shared = sorted({d for d in named if d.startswith("cuda") and named.count(d) > 1})
    if shared:
        raise SettingError(
            f"train.devices {devices} puts several stages on {', '.join(shared)}, but "
            "train.engine distributed runs one process per stage and NCCL allows one process "
            "per GPU: name a GPU per stage (e.g. [cuda:0, cuda:1]), write [cuda, cuda] for "
            "each process's own GPU, or use train.engine single_process to share a GPU"
        )


def weight_count(params: dict) -> int:
    """The model's parameters: each Linear's weights and biases."""
    return sum((i + 1) * o for i, o in layer_shapes(params))


def working_memory_mb(params: dict) -> float:
    """A lower bound of what training a run holds beyond the interpreter and the data:
    parameters with their gradient and Adam's two moments (x4, float32), and one batch's
    activations and their gradients (x4). The step's own buffers and torch itself add more."""
    batch = params["batch_size"]
    weights = weight_count(params)
    activations = batch * (
        IMAGE_SIDE * IMAGE_SIDE + 2 * sum(params["hidden_sizes"]) + 2 * NUM_CLASSES
    )
    return 4 * 4 * (weights + activations) / 2**20


SLOW_WRITE_MB_PER_S = 20
"""What a checkpoint's writing is planned at: a busy shared file system (local disks write
ten times as fast)."""


def stop_grace_seconds(params: dict) -> int:
    """How long a run's processes may need from a stop signal to their end: the step in
    progress and the start of the save (30 s), then a checkpoint of the weights and Adam's
    two moments (float32) written at SLOW_WRITE_MB_PER_S, counted twice."""
    return 30 + math.ceil(2 * 3 * 4 * weight_count(params) / 1e6 / SLOW_WRITE_MB_PER_S)


def check_stop_margin(params: dict, signal_seconds: float, run: str) -> None:
    """Refuse a SLURM margin too short to save this run's checkpoint before the limit."""
    needed = stop_grace_seconds(params)
    if signal_seconds < needed:
        raise SettingError(
            f"run {run}: resources.train_model_parallel.signal_seconds ({signal_seconds}) is "
            f"too short to save its checkpoint before the time limit (planned {needed} s for "
            f"train.hidden_sizes {params['hidden_sizes']}); raise it to at least {needed}"
        )


def check_memory(params: dict, mem_mb: int, run: str) -> None:
    """Refuse, before any job, a run that cannot fit in the memory its job asks for."""
    needed = working_memory_mb(params)
    if needed > mem_mb:
        raise SettingError(
            f"run {run} needs at least {needed:,.0f} MB for its weights, optimizer state and "
            f"one batch (train.hidden_sizes {params['hidden_sizes']}, train.batch_size "
            f"{params['batch_size']}), more than resources.train_model_parallel.mem_mb "
            f"({mem_mb}); lower them or raise mem_mb"
        )


def check_sweep(sweep: dict) -> None:
    """Every swept key is a training setting and every value a valid value of it."""
    for key, values in sweep.items():
        if key not in settings.TRAIN_SCHEMA:
            raise SettingError(
                f"sweep.{key}: not a training setting (one of {', '.join(settings.TRAIN_KEYS)})"
            )
        for i, value in enumerate(values):
            check_value(key, value, where=f"sweep.{key}[{i}] -> train")


# ----------------------------------------------------------- the whole configuration


def check_values(value, key: str = "") -> None:
    """What JSON Schema lets through: NaN and infinity, integers written as 2.0, and
    control characters (a pattern's $ accepts a trailing newline, which would split the
    shell command the value goes into)."""
    if isinstance(value, dict):
        for name, item in value.items():
            check_values(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            check_values(item, key)
    elif isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SettingError(f"config key {key}: {value!r} contains a control character")
    else:
        check_number(value, key.rpartition(".")[2] in INTEGER_KEYS, f"config key {key}")


INTEGER_KEYS = settings.integer_keys()

YAML_TEXT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
"""A number YAML 1.1 (PyYAML, Snakemake's reader) reads as text: 1e-3, 1.0e3, 5E-4."""


def numbers_read_as_text(value, key: str = "") -> list[str]:
    """Each config value that reads as text but was written as a number, with the fix."""
    if isinstance(value, dict):
        return [
            m for k, v in value.items() for m in numbers_read_as_text(v, f"{key}.{k}" if key else k)
        ]
    if isinstance(value, list):
        return [m for item in value for m in numbers_read_as_text(item, key)]
    if isinstance(value, str) and YAML_TEXT_NUMBER.fullmatch(value):
        return [
            f"config key {key}: {value!r} is text to YAML, not a number (YAML 1.1 reads an "
            f"exponent as a number only with a dot and a sign, as in 1.0e-3); write "
            f"{float(value)!r}"
        ]
    return []


def check_time_limit(resources: dict) -> None:
    """Refuse a time limit that leaves a job no time to train before it must leave."""
    work = resources["runtime"] * 60 - resources["signal_seconds"]
    if work < 30:
        raise SettingError(
            f"resources.train_model_parallel.runtime ({resources['runtime']} min) leaves "
            f"{work} s of training before signal_seconds ({resources['signal_seconds']} s): "
            "a job needs at least 30 s. Raise runtime or lower signal_seconds."
        )


def check_data_dir(data: dict) -> None:
    """data.dir is where downloading writes the files, and deletes them before it runs
    again; a mirror there would be deleted with them, so the two must differ."""
    here = os.path.realpath(data["dir"])
    for mirror in data["mirrors"]:
        parsed = urllib.parse.urlparse(mirror)
        if parsed.scheme not in ("", "file"):
            continue
        folder = urllib.request.url2pathname(parsed.path) if parsed.scheme else mirror
        if here in {os.path.realpath(p) for p in (folder, f"{folder}/FashionMNIST/raw")}:
            raise SettingError(
                f"config key data.dir ({data['dir']}) is also listed in data.mirrors "
                f"({mirror}): downloading would overwrite and, on a rerun, delete the "
                "mirror's files. Point data.dir at another folder; it is filled from the mirror."
            )


def validate_config(config: dict, schema: str) -> None:
    """Snakemake's validation against the schema (it fills in the defaults), its error
    followed by the fix for each number YAML read as text ("'1e-3' is not of type
    'number'" alone puzzles)."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, schema)
    except WorkflowError as err:
        hints = numbers_read_as_text(config)
        if not hints:
            raise
        raise WorkflowError("\n".join([str(err), *hints])) from None
