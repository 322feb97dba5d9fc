"""A run resumes on another stage layout: stopped with two stage processes it goes on with
three, or in one process, and the reverse, and ends with the bits of a run never stopped (on
the CPU a layer computes the same numbers whatever stage holds it). Each process loads only
the layers it holds from the shards the other layout wrote."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from helpers import Run, cli, interrupt, load_weights, metric_lines

pytestmark = pytest.mark.distributed

# 200 steps of 10 rows per epoch: long enough to be stopped inside epoch 2.
MODEL = {"hidden_sizes": [64, 32], "activation": "relu", "batch_size": 10, "epochs": 3}
MODEL |= {"microbatches": 2, "process_group_timeout": 30}
LAYOUTS = {
    "1 process": {"stage_split": [3], "devices": ["cpu"], "cpu_step": "autograd"},
    "2 stages": {"engine": "distributed", "stage_split": [2, 1], "devices": ["cpu"] * 2},
    "3 stages": {"engine": "distributed", "stage_split": [1, 1, 1], "devices": ["cpu"] * 3},
}


@pytest.fixture(scope="module")
def uninterrupted(synthetic_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layouts") / "uninterrupted"
    Run(out, cli(synthetic_data, out, **MODEL, **LAYOUTS["1 process"])).ok()
    return out


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("2 stages", "3 stages"),
        ("3 stages", "2 stages"),
        ("2 stages", "1 process"),
        ("1 process", "2 stages"),
    ],
)
def test_a_run_stopped_on_one_layout_resumes_exactly_on_another(
    synthetic_data, uninterrupted, tmp_path, before, after
):
    ref = uninterrupted
    out = tmp_path / "run"
    stopped = Run(out, cli(synthetic_data, out, **MODEL, **LAYOUTS[before]))
    interrupt(stopped, signal.SIGTERM)
    assert stopped.result().returncode == 75, stopped.result().stderr
    position = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert position["epoch"] >= 1

    resumed = Run(out, cli(synthetic_data, out, **MODEL, **LAYOUTS[after])).ok()
    assert f"resuming from {out / 'checkpoint.pt'}" in resumed.stdout
    assert metric_lines(out) == metric_lines(ref)
    # model.pt is named as the last layout's model; its tensors, layer by layer, are equal.
    mine, theirs = load_weights(out / "model.pt"), load_weights(ref / "model.pt")
    assert [tuple(t.shape) for t in mine.values()] == [tuple(t.shape) for t in theirs.values()]
    assert all(torch.equal(a, b) for a, b in zip(mine.values(), theirs.values()))
    attempts = json.loads((out / "run.json").read_text())["attempts"]
    assert len(attempts) == 2
    assert [len(a["peak_rss_mb"]) for a in attempts] == [
        len(LAYOUTS[layout]["stage_split"]) if "engine" in LAYOUTS[layout] else 1
        for layout in (before, after)
    ]
