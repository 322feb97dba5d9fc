"""Tests of workflow/scripts/benchmark.py and bench/step_variants.py (what it times).

The benchmark runs once (module fixture) on the synthetic 2000/500 dataset with one
thread, two rounds and short floors; train.py runs on the same data beside it. No
test asserts anything about speed: only that the report is complete and consistent
and that it timed train.py's own training.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys

import pytest
from bench.step_variants import step_flops
from bench.summary import step_figure, step_markdown
from helpers import ENV, SCRIPTS_DIR, run_script

BENCHMARK = SCRIPTS_DIR / "benchmark.py"
TRAIN = SCRIPTS_DIR / "train.py"
TIMEOUT = 600
ROUNDS = 2
VARIANTS = {
    "tutorial": "a",
    "workflow_for_loop_m1": "b",
    "workflow_foreach_m1": "b",
    "workflow_fused_m1": "b",
    "workflow_for_loop_m2": "b",
    "workflow_for_loop_m4": "b",
    "workflow_for_loop_m1_autograd": "b",
    "floor_eager_for_loop": "c",
    "floor_eager_for_loop_zero": "c",
    "floor_eager_fused": "c",
    "floor_kernelstep_for_loop": "c",
    "floor_kernelstep_foreach": "c",
    "floor_kernelstep_fused": "c",
    "matmul_bound": "c",
}
# train.py runs whose epochs the benchmark's rounds must reproduce: variant -> options
TRAIN_RUNS = {
    "workflow_for_loop_m1": [],
    "workflow_fused_m1": ["--adam-impl", "fused"],
    "workflow_for_loop_m4": ["--microbatches", "4"],
}


@pytest.fixture(scope="module")
def bench(synthetic_data, tmp_path_factory):
    """The benchmark's JSON and stdout, and train.py's epochs.csv rows per variant."""
    root = tmp_path_factory.mktemp("benchmark")
    out = root / "benchmark.json"
    common = ["--data-dir", str(synthetic_data), "--devices", "cpu", "cpu", "--threads", "1"]
    procs = {
        "benchmark": subprocess.Popen(
            [sys.executable, str(BENCHMARK), *common, "--repetitions", str(ROUNDS)]
            + ["--floor-steps", "5", "--sgemm-size", "128", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
    }
    for name, options in TRAIN_RUNS.items():
        procs[name] = subprocess.Popen(
            [sys.executable, str(TRAIN), *common, "--out-dir", str(root / name)]
            + ["--epochs", str(ROUNDS), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"{name}: {stdout}\n{stderr}"
            results[name] = stdout
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    epochs = {}
    for name in TRAIN_RUNS:
        with (root / name / "epochs.csv").open() as handle:
            epochs[name] = list(csv.DictReader(handle))
    return json.loads(out.read_text()), results["benchmark"], epochs


def test_report_has_every_variant_with_positive_numbers(bench):
    report, _, _ = bench
    assert set(report) == {
        "command",
        "settings",
        "environment",
        "flops_per_sample",
        "threads",
    }
    assert report["settings"]["devices"] == ["cpu", "cpu"]
    assert report["settings"]["train_samples"] == 2000
    assert report["settings"]["repetitions"] == ROUNDS
    assert list(report["threads"]) == ["1"]
    block = report["threads"]["1"]
    assert list(block["variants"]) == list(VARIANTS)
    for key, entry in block["variants"].items():
        assert entry["group"] == VARIANTS[key], key
        assert entry["label"], key
        sps = entry["samples_per_second"]
        assert len(sps["all"]) == ROUNDS, key
        assert all(v > 0 and math.isfinite(v) for v in sps["all"]), key
        assert sps["best"] == max(sps["all"]), key
        assert min(sps["all"]) <= sps["median"] <= sps["best"], key
        assert entry["gflops"]["best"] > 0 and entry["gflops"]["median"] > 0, key
    peak = block["sgemm_gflops"]
    assert len(peak["all"]) == ROUNDS and peak["best"] > 0 and peak["median"] > 0


def test_ratios_and_gflops_follow_from_the_samples_per_second(bench):
    report, _, _ = bench
    variants = report["threads"]["1"]["variants"]
    tutorial = variants["tutorial"]["samples_per_second"]
    flops = report["flops_per_sample"]["total"]
    for key, entry in variants.items():
        sps, ratio = entry["samples_per_second"], entry["ratio_to_tutorial"]
        assert ratio["best"] == pytest.approx(sps["best"] / tutorial["best"], rel=1e-12), key
        assert ratio["median"] == pytest.approx(sps["median"] / tutorial["median"], rel=1e-12)
        per_round = [a / b for a, b in zip(sps["all"], tutorial["all"])]
        assert ratio["median_of_rounds"] == pytest.approx(statistics.median(per_round), rel=1e-12)
        for stat in ("best", "median"):
            assert entry["gflops"][stat] == pytest.approx(sps[stat] * flops / 1e9, rel=1e-12)
    assert variants["tutorial"]["ratio_to_tutorial"] == {
        "best": 1.0,
        "median": 1.0,
        "median_of_rounds": 1.0,
    }


def test_flop_count_of_a_step():
    flops = step_flops(200)
    # forward 784x200 and 200x10; both weight gradients; layer 2's input gradient only
    assert flops == {
        "forward": 2 * 784 * 200 + 2 * 200 * 10,
        "weight_gradients": 2 * 784 * 200 + 2 * 200 * 10,
        "input_gradients": 2 * 200 * 10,
        "total": 639_200,
    }


def test_workflow_rounds_are_train_py_epochs(bench):
    """Round r of a workflow variant is epoch r of train.py with the same settings."""
    report, _, epochs = bench
    variants = report["threads"]["1"]["variants"]
    for name, rows in epochs.items():
        assert [float(row["train_loss"]) for row in rows] == variants[name]["losses"], name
    # The pre-KernelStep hot path (autograd) trains to the very same numbers.
    assert (
        variants["workflow_for_loop_m1_autograd"]["losses"]
        == variants["workflow_for_loop_m1"]["losses"]
    )
    # On the CPU torch's foreach Adam is the for_loop arithmetic.
    assert variants["workflow_foreach_m1"]["losses"] == variants["workflow_for_loop_m1"]["losses"]
    assert variants["workflow_fused_m1"]["losses"] != variants["workflow_for_loop_m1"]["losses"]
    for key, entry in variants.items():
        assert all(math.isfinite(v) for v in entry["losses"] if v is not None), key


def test_printed_table(bench):
    report, stdout, _ = bench
    table = stdout[stdout.index("FLOPs per sample of a step: 639,200") :]
    assert "threads 1: samples/s" in table
    for entry in report["threads"]["1"]["variants"].values():
        assert f"({entry['group']}) {entry['label']}" in table
    assert "machine matmul peak, 128^3 sgemm" in table


def test_help():
    result = run_script(BENCHMARK, "--help", env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    for flag in ("--threads", "--repetitions", "--train-size", "--adam-impls", "--out"):
        assert flag in result.stdout


def test_the_summary_table_and_figure_come_from_the_json(bench, tmp_path):
    """Each variant's best / median samples/s and ratio, as the JSON has them."""
    report, _, _ = bench
    markdown = step_markdown(report)
    for entry in report["threads"]["1"]["variants"].values():
        sps = entry["samples_per_second"]
        ratio = entry["ratio_to_tutorial"]["median_of_rounds"]
        cell = f"{sps['best']:,.0f} / {sps['median']:,.0f} ({ratio:.2f}×)"
        assert f"| ({entry['group']}) {entry['label']} | {cell} |" in markdown
    step_figure(report, tmp_path / "step.png")
    assert (tmp_path / "step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
