"""Tests of workflow/scripts/benchmark_pipeline.py (the distributed engine against the
single-process engine) and of its library (bench.pipeline_timing, pipeline_variants,
pipeline_results, machine).

The benchmark runs once (module fixture) on a small synthetic dataset with the tutorial's
model, one round, M = 4, both schedules and a short communication benchmark: five train.py
runs, two of them distributed. No test asserts anything about speed: only that the report
is complete and consistent, and that the engines trained to the very same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys

import pandas as pd
import pytest
from bench.machine import quietness
from bench.pipeline_results import goal_verdicts, median_of, ratios
from bench.pipeline_timing import aligned, clock_shifts, replay_span, spans
from bench.pipeline_variants import Variant, build_variants, parse_model
from bench.summary import pipeline_markdown
from fmnist.data import synthetic
from fmnist.report import timeline_figure as bubble
from helpers import ENV, SCRIPTS_DIR, TIMEOUT, run_script

pytestmark = pytest.mark.distributed

BENCHMARK = SCRIPTS_DIR / "benchmark_pipeline.py"
SUMMARY = SCRIPTS_DIR / "benchmark_summary.py"
VARIANTS = {
    "200/single_autograd_m1": ("single_process", 1, None),
    "200/single_kernels_m1": ("single_process", 1, None),
    "200/single_autograd_m4": ("single_process", 4, None),
    "200/distributed_gpipe_m4": ("distributed", 4, "gpipe"),
    "200/distributed_1f1b_m4": ("distributed", 4, "1f1b"),
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark_pipeline")
    data = root / "data"
    synthetic.write_synthetic(data, train_size=600, test_size=100, seed=0)
    out = root / "report.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--data-dir", str(data), "--models", "200"]
        + ["--microbatches", "4", "--repetitions", "1", "--epochs", "2"]
        + ["--comm-repeats", "20", "--keep-runs", str(root / "runs"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text()), result.stdout, root


def test_report_structure(bench):
    report, _, _ = bench
    assert set(report) == {
        "command",
        "settings",
        "environment",
        "load_average",
        "others_busy",
        "machine_check",
        "models",
        "variants",
        "communication",
        "identity",
        "goal",
    }
    assert report["settings"]["train_samples"] == 600
    assert report["settings"]["microbatches"] == [4]
    assert report["environment"]["cpu"] and report["environment"]["torch"]
    info = report["models"]["200"]
    assert info["stage_split"] == [1, 1]
    assert info["layer_flops_per_sample"] == [2 * 784 * 200, 2 * 200 * 10]
    assert info["boundary_width"] == 200
    assert sum(info["forward_share"]) == pytest.approx(1.0)
    assert list(report["variants"]) == list(VARIANTS)
    for key, entry in report["variants"].items():
        engine, micro, schedule = VARIANTS[key]
        assert (entry["engine"], entry["microbatches"], entry["schedule"]) == (
            engine,
            micro,
            schedule,
        )
        sps = entry["samples_per_second"]
        assert len(sps["all"]) == 1 and sps["best"] == sps["median"] == sps["all"][0] > 0
        timeline = entry["timeline"]
        assert 0 <= timeline["idle_fraction"] < 1
        assert timeline["steps"] == 4
        assert len(timeline["compute_ms_per_stage"]) == 2
        assert all(c > 0 for c in timeline["compute_ms_per_stage"])


def test_pipeline_figures(bench):
    report, _, _ = bench
    for key in ("200/distributed_gpipe_m4", "200/distributed_1f1b_m4"):
        entry = report["variants"][key]
        timeline = entry["timeline"]
        assert timeline["gpipe_formula"] == pytest.approx(1 / 5)
        assert entry["bubble_speedup_bound"] == pytest.approx(1.6)
        # a zero-latency replay is never shorter than the busiest stage's compute, nor
        # longer than what was measured (but for the ranks' clocks, aligned by a barrier)
        assert max(timeline["compute_ms_per_stage"]) <= timeline["replay_span_ms"] + 1e-9
        assert timeline["replay_span_ms"] <= timeline["span_ms"] + 1.0
        assert timeline["waits_ms"] == pytest.approx(
            timeline["span_ms"] - timeline["replay_span_ms"], abs=1e-6
        )
        assert timeline["clock_shift_ms"][0] == 0.0 and len(timeline["clock_shift_ms"]) == 2
        assert 0 <= timeline["idle_fraction_as_recorded"] < 1
        comm = entry["comm_microbenchmark"]
        assert comm["boundary_shape"] == [25, 200]
        assert comm["per_step_ms"] == pytest.approx(
            4 * comm["round_trip_ms"] + comm["all_reduce_ms"]
        )
        assert comm["round_trip_ms"] > 0 and math.isfinite(comm["round_trip_ms"])
    assert set(report["communication"]["round_trip_ms"]) == {"25x200"}


def test_speedups_follow_from_samples_per_second(bench):
    report, _, _ = bench
    variants = report["variants"]
    singles = [e for e in variants.values() if e["engine"] == "single_process"]
    fastest = max(singles, key=lambda e: e["samples_per_second"]["median"])
    for entry in variants.values():
        sps = entry["samples_per_second"]["median"]
        assert entry["fastest_single"] == fastest["variant"]
        ratio = entry["speedup_vs_fastest_single"]
        assert ratio["median"] == pytest.approx(sps / fastest["samples_per_second"]["median"])
        same = variants[f"200/single_autograd_m{entry['microbatches']}"]
        assert entry["speedup_vs_same_microbatches"]["median_of_rounds"] == pytest.approx(
            statistics.median([sps / same["samples_per_second"]["median"]])
        )
    verdicts = report["goal"]["models"]["200"]
    assert set(verdicts) == {"fastest_single", "same_microbatches"}
    for reference, scopes in verdicts.items():
        assert set(scopes) == {"gpipe", "any"}
        for scope, verdict in scopes.items():
            best = max(
                (
                    e
                    for e in variants.values()
                    if e["engine"] == "distributed" and scope in ("any", e["schedule"])
                ),
                key=lambda e: e[f"speedup_vs_{reference}"]["median_of_rounds"],
            )
            assert verdict["best_variant"] == best["variant"]
            assert verdict["speedup"] == best[f"speedup_vs_{reference}"]["median_of_rounds"]
            assert verdict["met"] == (verdict["speedup"] >= report["goal"]["goal"])
    check = report["machine_check"]
    assert check["alone_gflops"]["median"] > 0 and check["together_gflops"]["median"] > 0


def test_numbers_identical(bench):
    report, stdout, root = bench
    identity = report["identity"]
    assert identity["identical"] is True
    assert {p["variant"] for p in identity["pairs"]} == {
        "200/distributed_gpipe_m4",
        "200/distributed_1f1b_m4",
    }
    assert all(p["reference"] == "200/single_autograd_m4" for p in identity["pairs"])
    assert identity["kernels_vs_autograd"][0]["identical"] is True
    assert "numbers identical: yes" in stdout
    # the runs were real train.py runs of both engines
    runs = root / "runs" / "round1"
    for key, (engine, micro, schedule) in VARIANTS.items():
        record = json.loads((runs / key.replace("/", "_") / "run.json").read_text())
        assert record["params"]["engine"] == engine
        assert record["params"]["microbatches"] == micro
        if schedule is not None:
            assert record["params"]["schedule"] == schedule


def test_printed_table(bench):
    report, stdout, _ = bench
    table = stdout[stdout.index("machine: ") :]
    assert "model 200: layers per stage [1, 1], boundary width 200" in table
    for entry in report["variants"].values():
        assert entry["variant"] in table
    assert "goal >= 1.5x, model 200, vs fastest single: GPipe: distributed gpipe m4" in table
    assert "goal >= 1.5x, model 200, vs same microbatches: GPipe: distributed gpipe" in table
    assert "machine check: 1-thread (100 x 1024) @ (1024 x 1024)" in table
    assert "other processes' CPU use before each run: median" in table
    assert len(report["others_busy"]["before_each_run"]) == len(VARIANTS)
    assert "comm (measured directly" in table


# A perfect GPipe step, K = 2, M = 2, every pass 1 s, transfers instant:
# (stage, micro-batch, phase, start, end)
PERFECT = [
    (0, 0, "forward", 0, 1),
    (0, 1, "forward", 1, 2),
    (1, 0, "forward", 1, 2),
    (1, 1, "forward", 2, 3),
    (1, 0, "backward", 3, 4),
    (1, 1, "backward", 4, 5),
    (0, 0, "backward", 4, 5),
    (0, 1, "backward", 5, 6),
]


def perfect_timeline(stage1_clock_lag: float) -> pd.DataFrame:
    rows = [
        {
            "step": 0,
            "stage": stage,
            "microbatch": mb,
            "phase": phase,
            "start_seconds": float(start) - (stage1_clock_lag if stage else 0.0),
            "end_seconds": float(end) - (stage1_clock_lag if stage else 0.0),
        }
        for stage, mb, phase, start, end in PERFECT
    ]
    return pd.DataFrame(rows)


def test_clock_shift_and_replay_of_a_perfect_schedule():
    recorded = perfect_timeline(stage1_clock_lag=2.0)
    assert clock_shifts(recorded) == [0.0, 2.0]
    # aligned, it measures exactly the GPipe formula; as recorded it does not
    fixed = aligned(recorded, clock_shifts(recorded))
    assert bubble.idle_fractions(fixed, 2).fraction == pytest.approx(1 / 3)
    assert bubble.idle_fractions(recorded, 2).fraction != pytest.approx(1 / 3)
    # the replay needs no clocks across stages: the schedule's own span
    rows = list(recorded.itertuples(index=False))
    assert replay_span(rows) == pytest.approx(6.0)
    # a clock that is right is left alone
    assert clock_shifts(perfect_timeline(0.0)) == [0.0, 0.0]


def test_replay_removes_transfer_latency():
    late = perfect_timeline(0.0)
    # stage 1 starts its first forward 0.5 s late (a slow transfer): every later pass too
    late.loc[late["stage"] == 1, ["start_seconds", "end_seconds"]] += 0.5
    late.loc[
        (late["stage"] == 0) & (late["phase"] == "backward"), ["start_seconds", "end_seconds"]
    ] += 0.5
    assert replay_span(list(late.itertuples(index=False))) == pytest.approx(6.0)
    assert spans(late).iloc[0] == pytest.approx(6.5)


def test_parse_model():
    assert parse_model("256+1024") == (256, 1024)
    assert parse_model("200") == (200,)
    assert parse_model("8,16") == (8, 16)
    for bad in ("a+b", "0+5", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_model(bad)


def test_variants_of_a_model():
    args = argparse.Namespace(
        models=[(200,), (8, 16, 4)], microbatches=[1, 4], schedules=["gpipe", "zbv_zero_bubble"]
    )
    keys = [v.key for v in build_variants(args)]
    # the kernel step only where train.py has it (the tutorial's layout); no single m1 twice;
    # a schedule of two stages per process only where the model has a layer per stage
    assert keys == [
        "200/single_autograd_m1",
        "200/single_kernels_m1",
        "200/single_autograd_m4",
        "200/distributed_gpipe_m1",
        "200/distributed_gpipe_m4",
        "8+16+4/single_autograd_m1",
        "8+16+4/single_autograd_m4",
        "8+16+4/distributed_gpipe_m1",
        "8+16+4/distributed_zbv_zero_bubble_m1",
        "8+16+4/distributed_gpipe_m4",
        "8+16+4/distributed_zbv_zero_bubble_m4",
    ]
    distributed = Variant((8, 16), "distributed", 4, "1f1b")
    assert distributed.options()[-6:] == [
        "--engine", "distributed", "--schedule", "1f1b", "--stages-per-process", "1"
    ]  # fmt: skip
    single = Variant((8, 16), "single_process", 2, cpu_step="kernels")
    assert single.options()[-2:] == ["--cpu-step", "kernels"]


def test_ratios_and_medians_over_rounds():
    sps = {"all": [4.0, 6.0], "best": 6.0, "median": 5.0}
    reference = {"all": [2.0, 2.0], "best": 2.0, "median": 2.0}
    assert ratios(sps, reference) == {"best": 3.0, "median": 2.5, "median_of_rounds": 2.5}
    runs = [{"t": {"x": 1.0, "xs": [1.0, 4.0]}}, {"t": {"x": 3.0, "xs": [3.0, 2.0]}}]
    assert median_of(runs, "t", "x") == 2.0
    assert median_of(runs, "t", "xs") == [2.0, 3.0]


def test_goal_verdicts_pick_the_best_variant_of_each_scope():
    def entry(schedule, m, fastest, same):
        return {
            "model": "200",
            "engine": "distributed",
            "variant": f"distributed {schedule} m{m}",
            "schedule": schedule,
            "microbatches": m,
            "fastest_single": "single kernels m1",
            "speedup_vs_fastest_single": {"median_of_rounds": fastest},
            "speedup_vs_same_microbatches": {"median_of_rounds": same},
        }

    entries = {
        "a": entry("gpipe", 4, 1.2, 1.6),
        "b": entry("1f1b", 4, 1.7, 1.4),
        "c": entry("gpipe", 2, 9.0, 9.0),  # M < 4: not judged
    }
    verdicts = goal_verdicts(["200"], entries)["models"]["200"]
    fastest, same = verdicts["fastest_single"], verdicts["same_microbatches"]
    assert fastest["gpipe"]["best_variant"] == "distributed gpipe m4"
    assert not fastest["gpipe"]["met"]
    assert fastest["any"]["best_variant"] == "distributed 1f1b m4" and fastest["any"]["met"]
    assert same["gpipe"]["against"] == "single autograd m4" and same["gpipe"]["met"]


def test_quietness():
    assert quietness([None, None])["median"] is None
    assert quietness([None, None])["quiet"] is False
    busy = quietness([0.02, None, 0.5, 0.04])
    assert busy["median"] == 0.04 and busy["max"] == 0.5 and busy["quiet"] is True


def test_help():
    result = run_script(BENCHMARK, "--help", env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    for flag in ("--models", "--microbatches", "--schedules", "--repetitions", "--out"):
        assert flag in result.stdout
    assert "numbers identical" in result.stdout


def test_microbatches_must_divide_the_batch():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--microbatches", "8"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 2
    assert "do not divide --batch-size 100" in result.stderr


def test_the_summary_tables_and_figure_come_from_the_json(bench, tmp_path):
    """benchmark_summary.py renders the report's numbers, not numbers typed by hand."""
    report, _, root = bench
    markdown = pipeline_markdown(report)
    for entry in report["variants"].values():
        row = f"| {entry['model']} | {entry['variant']} | "
        assert row + f"{entry['samples_per_second']['median']:,.0f} |" in markdown
    fastest = report["goal"]["models"]["200"]["fastest_single"]["any"]
    assert f"{fastest['best_variant']} {fastest['speedup']:.2f}×" in markdown
    done = subprocess.run(
        [sys.executable, str(SUMMARY), "--pipeline", str(root / "report.json")]
        + ["--markdown", str(tmp_path / "t.md"), "--pipeline-figure", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t.md").read_text() == markdown
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
