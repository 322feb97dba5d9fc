"""The memory benchmark's runs: peak resident memory per process of each engine, and a
model that fits in two stage processes under a per-process limit but not in one process."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from fmnist.config.stages import layer_shapes, stage_split
from fmnist.rundir.runfiles import EPOCHS_FILE, RECORD_FILE

SCRIPTS = Path(__file__).resolve().parents[1]
TRAIN = SCRIPTS / "train.py"


def tiny(stages: int) -> list[int]:
    """The baseline model, a layer per stage of width 10: what a process holds without a
    model (torch itself, the data, the process group)."""
    return [10] * max(1, stages - 1)


def train_command(data: Path, out: Path, hidden: list[int], stages: int, epochs: int) -> list:
    engine = ["--engine", "distributed"] if stages > 1 else []
    devices = ["cpu"] * max(stages, 2)
    return [
        sys.executable, str(TRAIN), "--data-dir", str(data), "--out-dir", str(out),
        "--hidden-sizes", *map(str, hidden), "--epochs", str(epochs), "--threads", "1",
        "--devices", *devices, *engine,
    ]  # fmt: skip


def limited(gigabytes: float | None):
    """A preexec_fn that caps the process's (and its children's) address space."""
    if gigabytes is None:
        return None
    limit = int(gigabytes * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run(command: list, out: Path, limit_gb=None, stop_after_epochs=None) -> dict:
    """train.py once; with ``stop_after_epochs``, SIGTERM once that many epochs are written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limited(limit_gb)
    )
    while stop_after_epochs is not None and proc.poll() is None:
        epochs = out / EPOCHS_FILE
        if epochs.is_file() and len(epochs.read_text().splitlines()) > stop_after_epochs:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    status = proc.wait()
    log.close()
    return {"exit_status": status, "seconds": time.monotonic() - started}


def peaks(out: Path) -> list[list[float]]:
    """Each attempt's peak resident memory per process (run.json), in MB."""
    record = json.loads((out / RECORD_FILE).read_text())
    return [attempt["peak_rss_mb"] for attempt in record["attempts"]]


def training_mb(hidden: list[int], stages: int) -> dict:
    """What the model's training state takes: weights, gradients and Adam's two moments
    (4 float32 per weight), for the whole model and for each stage, and each holder's
    largest layer (torch's for-loop Adam makes temporaries of one parameter's size)."""
    params = {"hidden_sizes": hidden, "stage_split": "flops", "devices": ["cpu"] * stages}
    sizes = [(i + 1) * o for i, o in layer_shapes(params)]
    split, first, per_stage = stage_split(params), 0, []
    for count in split:
        layers = sizes[first : first + count]
        per_stage.append(
            {"state_mb": 16 * sum(layers) / 2**20, "largest_mb": 4 * max(layers) / 2**20}
        )
        first += count
    whole = {"state_mb": 16 * sum(sizes) / 2**20, "largest_mb": 4 * max(sizes) / 2**20}
    return {"split": split, "whole": whole, "stages": per_stage}


def scaling(data: Path, root: Path, hidden: list[int], stages: int) -> dict:
    """Peak memory of the single process and of each of ``stages`` processes, each against
    the same engine with the tiny model (the fixed part)."""
    figures = {}
    for name, model, k in [
        ("single_tiny", tiny(stages), 1), ("single", hidden, 1),
        ("stages_tiny", tiny(stages), stages), ("stages", hidden, stages),
    ]:  # fmt: skip
        out = root / f"{'+'.join(map(str, hidden))}-{name}"
        result = run(train_command(data, out, model, k, epochs=1), out)
        if result["exit_status"] != 0:
            raise RuntimeError(f"{out}: train.py ended with {result['exit_status']} (see its log)")
        figures[name] = peaks(out)[0]
    single_part = figures["single"][0] - figures["single_tiny"][0]
    stage_parts = [p - b for p, b in zip(figures["stages"], figures["stages_tiny"])]
    return {
        "hidden_sizes": hidden,
        "stages": stages,
        "peak_rss_mb": figures,
        "model_mb_single": single_part,
        "model_mb_stages": stage_parts,
        "ratio_to_single": [part / single_part for part in stage_parts],
        "expected": training_mb(hidden, stages),
    }


def over_the_limit(data: Path, root: Path, hidden: list[int], limit_gb: float) -> dict:
    """The single process under a per-process address-space limit (expected to fail for
    want of memory), then two stage processes under the same limit each: two epochs,
    stopped after the first, resumed, finished; and the single process without a limit,
    whose numbers the two-stage run must repeat."""
    single = root / "limit-single"
    stages = root / "limit-stages"
    reference = root / "limit-reference"
    found = {"hidden_sizes": hidden, "limit_gb": limit_gb}
    found["single"] = run(train_command(data, single, hidden, 1, 2), single, limit_gb)
    found["stages_stopped"] = run(train_command(data, stages, hidden, 2, 2), stages, limit_gb, 1)
    found["stages_resumed"] = run(train_command(data, stages, hidden, 2, 2), stages, limit_gb)
    found["reference"] = run(train_command(data, reference, hidden, 1, 2), reference)
    if found["stages_resumed"]["exit_status"] == 0 and found["reference"]["exit_status"] == 0:
        found["stages_peak_rss_mb"] = peaks(stages)
        found["reference_peak_rss_mb"] = peaks(reference)
        metrics = [
            [line.split(",")[:4] for line in (out / EPOCHS_FILE).read_text().splitlines()]
            for out in (stages, reference)
        ]
        found["numbers_identical"] = metrics[0] == metrics[1]
    return found
