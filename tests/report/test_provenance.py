"""Tests of fmnist.report.provenance: provenance.csv (and the runs.csv columns) from run.json."""

from __future__ import annotations

import json

import pandas as pd
from fmnist.report import provenance, tables
from fmnist.report.gathering import load_runs
from helpers import BASE_PARAMS, slurm_job, three_epochs, write_run_folder, write_three_seeds


def build(paths) -> tables.Tables:
    return tables.build_tables(load_runs(paths))


def test_provenance_from_the_attempts(tmp_path):
    """Host, versions and scheduler from the last attempt; start from the first."""
    second = {
        "started": "2026-11-28T08:00:00+00:00",
        "finished": "2026-11-28T09:00:00+00:00",
        "start_epoch": 2,
        "hostname": "gpu7",
        "device_names": ["NVIDIA H200", "NVIDIA H200"],
        "cuda_visible_devices": "0,1",
        "slurm": slurm_job("12", partition="gpu", node="gpu7"),
        "versions": {
            **dict.fromkeys(["torchvision", "snakemake", "numpy"]),
            "python": "3.11.9",
            "torch": "2.14.1+cu130",
            "cuda": "13.0",
            "cudnn": 92400,
        },
    }
    first = {
        "finished": "2026-11-27T20:59:00+00:00",
        "stopped": "time limit",
        "slurm": slurm_job("11"),
    }
    md5 = {"train-images-idx3-ubyte.gz": "0" * 32, "t10k-images-idx3-ubyte.gz": "f" * 32}
    folder = write_run_folder(
        tmp_path,
        "resumed",
        three_epochs(0.8),
        {**BASE_PARAMS, "devices": ["cuda:0", "cuda:1"]},
        setup={"devices": ["cuda:0", "cuda:1"], "threads": 4, "data_md5": md5},
        git={"commit": "def456", "dirty": True},
        attempts=[first, second],
    )
    result = build([folder])
    (row,) = result.provenance.to_dict("records")
    assert row["git_commit"] == "def456" and row["git_dirty"] == "True"
    assert (row["python"], row["torch"], row["cuda"], row["cudnn"]) == (
        "3.11.9",
        "2.14.1+cu130",
        "13.0",
        "92400",
    )
    assert pd.isna(row["torchvision"])
    assert row["stage_devices"] == "cuda:0,cuda:1"
    assert row["device_names"] == "NVIDIA H200,NVIDIA H200"
    assert (row["threads"], row["hostname"], row["cuda_visible_devices"]) == ("4", "gpu7", "0,1")
    assert (row["train_step"], row["processes"]) == ("KernelStep", 1)
    assert row["slurm_job_ids"] == "11 12"
    assert (row["slurm_partition"], row["slurm_node"], row["attempts"]) == ("gpu", "gpu7", 2)
    assert row["started"] == "2026-11-27T20:00:00+00:00"
    assert row["finished"] == "2026-11-28T09:00:00+00:00"
    assert row["md5_train-images-idx3-ubyte.gz"] == "0" * 32
    assert list(result.provenance.columns)[-2:] == [
        "md5_t10k-images-idx3-ubyte.gz",
        "md5_train-images-idx3-ubyte.gz",
    ]
    run = result.runs.iloc[0]
    assert (run["slurm_job_id"], run["device_names"]) == ("12", "NVIDIA H200,NVIDIA H200")


def test_provenance_columns_are_kept(tmp_path):
    table = build(write_three_seeds(tmp_path)).provenance
    assert list(table.columns) == [
        "run_id",
        "git_commit",
        "git_dirty",
        *provenance.PROVENANCE_VERSIONS,
        "stage_devices",
        "device_names",
        "train_step",
        "processes",
        "threads",
        "hostname",
        "cuda_visible_devices",
        "slurm_job_ids",
        "slurm_partition",
        "slurm_node",
        "attempts",
        "started",
        "finished",
    ]
    assert table["slurm_job_ids"].tolist() == ["100", "101", "102"]
    assert table["hostname"].tolist() == ["node1"] * 3


def test_unfinished_attempt_leaves_finished_empty(tmp_path):
    """An attempt without ``finished`` (it stopped early) gives an empty cell, not an error."""
    folder = write_run_folder(tmp_path, "r", three_epochs(0.8), BASE_PARAMS)
    record = json.loads((folder / "run.json").read_text())
    del record["attempts"][0]["finished"]
    (folder / "run.json").write_text(json.dumps(record))
    assert pd.isna(build([folder]).provenance["finished"][0])
