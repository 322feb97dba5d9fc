"""Tests of fmnist.report.tables: the epochs, runs, summary and provenance tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from fmnist.report import compute, tables
from fmnist.report.gathering import gather_runs, load_runs
from fmnist.rundir import runfiles
from fmnist.rundir.runfiles import Run
from helpers import (
    BASE_PARAMS,
    RUN_HEADER,
    three_epochs,
    write_run,
    write_several_configs,
    write_three_seeds,
    write_tutorial_log,
)


def build(paths) -> tables.Tables:
    return tables.build_tables(load_runs(paths))


def test_summary_three_seeds_exact(tmp_path):
    summary = gather_runs(write_three_seeds(tmp_path), tmp_path / "out").summary
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["n_seeds"] == 3
    half = 4.302652730 * 0.02 / math.sqrt(3)
    assert row["final_test_accuracy_mean"] == pytest.approx(0.82, rel=1e-12)
    assert row["final_test_accuracy_std"] == pytest.approx(0.02, rel=1e-9)
    assert row["final_test_accuracy_ci95_low"] == pytest.approx(0.82 - half, rel=1e-9)
    assert row["final_test_accuracy_ci95_high"] == pytest.approx(0.82 + half, rel=1e-9)
    # train losses 0.3, 0.2, 0.4: mean 0.3, std 0.1; test losses +0.1.
    assert row["final_train_loss_mean"] == pytest.approx(0.3, rel=1e-12)
    assert row["final_train_loss_std"] == pytest.approx(0.1, rel=1e-9)
    assert row["final_test_loss_mean"] == pytest.approx(0.4, rel=1e-12)
    assert row["final_test_loss_ci95_high"] == pytest.approx(
        0.4 + 4.302652730 * 0.1 / math.sqrt(3), rel=1e-9
    )
    # Grouping drops seed but keeps every other parameter; the label comes last.
    assert "seed" not in summary.columns
    assert list(summary.columns[:9]) == [c for c in BASE_PARAMS if c != "seed"] + ["n_seeds"]
    assert summary.columns[-1] == "configuration" and row["configuration"] == "base"
    assert row["lr"] == 0.001 and row["hidden_sizes"] == "200"

    # The CSV on disk keeps full precision.
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert on_disk["final_test_accuracy_ci95_low"][0] == pytest.approx(0.82 - half, rel=1e-9)
    assert on_disk["final_test_accuracy_ci95_low"][0] == summary["final_test_accuracy_ci95_low"][0]


def test_accuracy_interval_is_clipped_to_0_and_1(tmp_path):
    # Two seeds near 1: the Student-t interval would reach past 100 %.
    paths = [
        write_run(tmp_path, f"s={seed}", three_epochs(acc), seed=seed)
        for seed, acc in [(0, 0.97), (1, 0.995)]
    ]
    row = build(paths).summary.iloc[0]
    assert row["final_test_accuracy_ci95_high"] == 1.0
    assert 0.0 <= row["final_test_accuracy_ci95_low"] < row["final_test_accuracy_mean"]
    assert row["final_train_loss_ci95_low"] >= 0.0


def test_runs_table_values(tmp_path):
    three_seeds = write_three_seeds(tmp_path)
    runs = gather_runs(three_seeds, tmp_path / "out").runs
    assert list(runs["run_id"]) == [f"lr=0.001_seed={s}" for s in range(3)]
    assert list(runs.columns) == [
        "run_id",
        *BASE_PARAMS,
        *tables.RUN_METRICS,
        *compute.RUN_COLUMNS,
        "configuration",
    ]
    r = runs.iloc[1]
    assert r["final_test_accuracy"] == pytest.approx(0.82, rel=1e-12)
    assert r["best_test_accuracy"] == pytest.approx(0.82, rel=1e-12)
    assert r["best_epoch"] == 3
    assert r["final_train_loss"] == pytest.approx(0.2, rel=1e-12)
    assert r["final_test_loss"] == pytest.approx(0.3, rel=1e-12)
    assert r["total_train_seconds"] == pytest.approx(9.0, rel=1e-12)
    assert r["mean_samples_per_second"] == pytest.approx(1100.0, rel=1e-12)
    assert r["stage_devices"] == "cpu,cpu"
    assert r["device_names"] == "cpu,cpu"
    assert r["git_commit"] == "abc123"
    assert r["slurm_job_id"] == "101"
    assert r["seed"] == 1
    assert list(runs["configuration"]) == ["base"] * 3

    on_disk = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(on_disk.columns) == list(runs.columns)
    assert list(on_disk["best_epoch"]) == [3, 3, 3]
    assert list(on_disk["slurm_job_id"]) == [100, 101, 102]


def test_best_epoch_first_on_ties_and_optional_metadata(tmp_path):
    rows = [
        (1, 1.0, 1.0, 0.70, 1.0, 10.0),
        (2, 0.8, 0.9, 0.90, 1.0, 10.0),
        (3, 0.7, 0.8, 0.85, 1.0, 10.0),
        (4, 0.6, 0.7, 0.90, 1.0, 10.0),
    ]
    tie = write_run(tmp_path, "tie", rows, slurm=None, git_commit=None, epochs=4)
    r = build([tie]).runs.iloc[0]
    assert r["best_epoch"] == 2
    assert r["best_test_accuracy"] == pytest.approx(0.90)
    assert r["final_test_accuracy"] == pytest.approx(0.90)
    assert pd.isna(r["slurm_job_id"])
    assert pd.isna(r["git_commit"])


def test_epochs_table_and_list_params(tmp_path):
    header = RUN_HEADER + ",peak_memory_mb_cuda0"
    rows = [(*r, 100 * r[0]) for r in three_epochs(0.8)]  # the GPU run's extra column
    a = write_run(
        tmp_path / "runs",
        "a",
        rows,
        header=header,
        devices=["cuda:0", "cuda:1"],
        stages=("cuda:0", "cuda:1"),
    )
    b = write_run(tmp_path / "runs", "b", three_epochs(0.9)[:2], lr=0.01, epochs=2)
    result = gather_runs([a, b], tmp_path / "out")
    epochs, runs, summary = result.epochs, result.runs, result.summary

    assert len(epochs) == 5
    assert list(epochs.columns) == [
        "run_id",
        *BASE_PARAMS,
        *runfiles.EPOCH_COLUMNS,
        "peak_memory_mb_cuda0",
    ]
    assert list(epochs["run_id"]) == ["a"] * 3 + ["b"] * 2
    assert list(epochs["epoch"]) == [1, 2, 3, 1, 2]
    assert list(epochs["peak_memory_mb_cuda0"][:3]) == [100, 200, 300]
    assert epochs["peak_memory_mb_cuda0"][3:].isna().all()
    assert list(epochs["devices"]) == ["cuda:0,cuda:1"] * 3 + ["auto"] * 2
    assert list(epochs["lr"]) == [0.001] * 3 + [0.01] * 2
    assert runs["stage_devices"][0] == "cuda:0,cuda:1"
    assert runs["best_epoch"][1] == 2
    # Two configurations (devices, epochs and lr differ), one seed each; labels name them.
    assert list(summary["n_seeds"]) == [1, 1]
    assert list(summary["configuration"]) == [
        "devices=cuda:0+cuda:1, epochs=3, lr=0.001",
        "devices=auto, epochs=2, lr=0.01",
    ]
    assert summary["final_test_accuracy_std"].isna().all()
    assert summary["final_test_accuracy_ci95_low"].isna().all()

    on_disk = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert on_disk.shape == epochs.shape
    assert on_disk["test_accuracy"].tolist() == epochs["test_accuracy"].tolist()


def test_grouping_several_configs(tmp_path):
    result = build(write_several_configs(tmp_path))
    summary = result.summary
    assert list(summary["lr"]) == [0.001, 0.01, 0.1]
    assert list(summary["n_seeds"]) == [3, 2, 1]
    assert list(summary["configuration"]) == ["lr=0.001", "lr=0.01", "lr=0.1"]
    assert list(result.runs["configuration"]) == ["lr=0.001"] * 3 + ["lr=0.01"] * 2 + ["lr=0.1"]
    assert summary["final_test_accuracy_mean"].tolist() == pytest.approx(
        [0.82, 0.72, 0.5], rel=1e-12
    )
    std2 = math.sqrt(2) * 0.02
    assert summary["final_test_accuracy_std"][1] == pytest.approx(std2, rel=1e-9)
    half2 = 12.706204736 * std2 / math.sqrt(2)
    assert summary["final_test_accuracy_ci95_low"][1] == pytest.approx(0.72 - half2, rel=1e-9)
    assert math.isnan(summary["final_test_accuracy_std"][2])


def test_tutorial_log(tmp_path):
    result = build([write_tutorial_log(tmp_path / "tutorial_run.log")])
    epochs, runs, summary = result.epochs, result.runs, result.summary
    assert list(epochs["run_id"]) == ["tutorial_run"] * 3
    assert list(epochs["epoch"]) == [1, 2, 3]
    assert epochs["train_loss"].tolist() == [0.5234, 0.4123, 0.39]
    assert epochs["test_accuracy"].isna().all()
    r = runs.iloc[0]
    assert r["run_id"] == "tutorial_run"
    assert r["final_train_loss"] == 0.39
    assert r["configuration"] == "tutorial log"
    for col in [
        "final_test_accuracy",
        "best_test_accuracy",
        "best_epoch",
        "final_test_loss",
        "total_train_seconds",
        "mean_samples_per_second",
        "stage_devices",
        "git_commit",
        "slurm_job_id",
    ]:
        assert pd.isna(r[col]), col
    assert len(summary) == 1
    assert summary["n_seeds"][0] == 1
    assert summary["final_train_loss_mean"][0] == 0.39
    assert math.isnan(summary["final_test_accuracy_mean"][0])
    assert result.provenance.empty  # a tutorial log carries no provenance


def test_tutorial_log_mixed_with_runs(tmp_path):
    paths = [*write_three_seeds(tmp_path), write_tutorial_log(tmp_path / "tutorial.txt")]
    result = gather_runs(paths, tmp_path / "out")
    runs, summary = result.runs, result.summary
    assert runs["run_id"].iloc[-1] == "tutorial"
    assert runs.iloc[-1][list(BASE_PARAMS)].isna().all()
    # Integer parameters stay integers although the log has none.
    assert runs["batch_size"].iloc[0] == 100
    assert str(runs["batch_size"].dtype) == "Int64"
    assert list(summary["n_seeds"]) == [3, 1]  # runs without parameters form a group
    assert list(summary["configuration"]) == ["base", "tutorial log"]
    on_disk = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert on_disk["epochs"].iloc[0] == 3 and pd.isna(on_disk["epochs"].iloc[-1])
    assert on_disk["configuration"].tolist() == ["base"] * 3 + ["tutorial log"]


def fake_run(run_id: str, **params) -> Run:
    return Run(run_id, Path(run_id), params, epochs={})


def test_configuration_labels():
    runs = [
        fake_run("a", lr=0.001, hidden_sizes=100, epochs=10, seed=0),
        fake_run("b", lr=0.001, hidden_sizes=100, epochs=10, seed=1),
        fake_run("c", lr=0.01, hidden_sizes=100, epochs=10, seed=0),
        fake_run("d", lr=0.01, hidden_sizes=200, epochs=10, seed=0),
        fake_run("t"),
    ]
    assert tables.parameter_columns(runs) == ["lr", "hidden_sizes", "epochs", "seed"]
    group_cols = tables.config_columns(tables.parameter_columns(runs))
    index, labels = tables.configurations(runs, group_cols)
    assert index == [0, 0, 1, 2, 3]
    assert labels == [
        "lr=0.001, hidden_sizes=100",
        "lr=0.01, hidden_sizes=100",
        "lr=0.01, hidden_sizes=200",
        "tutorial log",
    ]
    assert tables.configurations(runs[:2], group_cols)[1] == ["base"]
    assert tables.configurations([runs[4]], [])[1] == ["tutorial log"]
    assert tables.configurations([fake_run("s", seed=0)], [])[1] == ["base"]


def test_configuration_labels_write_values_as_run_ids_do():
    runs = [
        fake_run("a", devices=["cuda:0", "cuda:1"], double=True, seed=0),
        fake_run("b", devices=["cpu"], double=False, seed=0),
    ]
    _, labels = tables.configurations(runs, ["devices", "double"])
    assert labels == ["devices=cuda:0+cuda:1, double=true", "devices=cpu, double=false"]
