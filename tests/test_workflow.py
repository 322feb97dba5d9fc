"""The whole workflow, end to end, on the CPU and offline, as a user runs it.

A copy of the workflow (Snakefile, workflow/, config/, profiles/) runs with the local profile
and a small overlay: SYNTHETIC data (generated, then fetched through the download rule from a
local-folder mirror), 2 epochs on [cpu, cpu]. Then the report is built and a second dry run has
nothing to do.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow
from conftest import run_snakemake as snakemake
from fmnist import settings

FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
MIRROR = "resources/synthetic_fashion_mnist_mirror"
DATA_DIR = "resources/synthetic"
COLUMNS = [
    "epoch",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "epoch_seconds",
    "samples_per_second",
]
OVERLAY = {
    "data": {
        "dir": DATA_DIR,
        "synthetic": {"train_size": 2000, "test_size": 500, "seed": 0},
    },
    "train": {"epochs": 2, "devices": ["cpu", "cpu"]},
}
TUTORIAL_LINE = re.compile(r"^Epoch \[\d+/2\], Loss: \d+\.\d{4}$")


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    """The copy of the workflow after one complete run (and the run's output)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY, sort_keys=False))
    result = snakemake(
        workdir, "--profile", "profiles/local", "--configfile", "overlay.yaml", "--cores", "2"
    )
    return workdir, result


@pytest.fixture(scope="module")
def done(workflow_run) -> Path:
    workdir, result = workflow_run
    assert result.returncode == 0, output_of(result)
    return workdir


def test_run_succeeds_with_every_job(workflow_run):
    workdir, result = workflow_run
    assert result.returncode == 0, output_of(result)
    log = result.stderr
    for rule in (
        "make_synthetic_fashion_mnist",
        "download_fashion_mnist",
        "train_model_parallel",
        "gather_epoch_logs",
        "plot_loss_curves",
    ):
        assert f"rule {rule}:" in log or f"localrule {rule}:" in log, rule
    assert re.search(r"(\d+) of \1 steps \(100%\) done", log), log[-3000:]
    # The scripts run from the copied workflow (workflow.basedir), named relative to the
    # working directory so that a clone elsewhere reruns nothing.
    assert "python workflow/scripts/train.py --data-dir resources/synthetic" in log


def test_data_came_through_the_download_rule_from_the_synthetic_mirror(done):
    log = (done / "results/logs/download_fashion_mnist.log").read_text()
    lines = log.splitlines()
    assert len(lines) == 4, log
    sums = {}
    for line in (done / MIRROR / "MD5SUMS").read_text().splitlines():
        value, name = line.split()
        sums[name] = value
    assert sorted(sums) == sorted(FILES)
    for name, line in zip(FILES, lines):
        assert line.startswith(f"{DATA_DIR}/{name}: fetched from {MIRROR}/{name} in "), line
        assert line.endswith(", MD5 OK"), line
        assert hashlib.md5((done / DATA_DIR / name).read_bytes()).hexdigest() == sums[name]
    assert "mirror failed" not in log
    synthetic_log = (done / "results/logs/make_synthetic_fashion_mnist.log").read_text()
    assert "SYNTHETIC DATA" in synthetic_log
    assert (done / MIRROR / "SYNTHETIC_DATA_README.txt").is_file()
    assert not list((done / DATA_DIR).glob(".*part*"))


def test_run_outputs(done):
    run = done / "results/runs/base"
    for name in ("epochs.csv", "run.json", "model.pt"):
        assert (run / name).stat().st_size > 0, name
    assert not (run / "checkpoint.pt").exists()  # removed once training finished

    with (run / "epochs.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header == COLUMNS
    assert len(rows) == 2
    epochs = read_csv(run / "epochs.csv")
    assert [row["epoch"] for row in epochs] == ["1", "2"]
    for row in epochs:
        values = {k: float(v) for k, v in row.items()}
        assert all(math.isfinite(v) for v in values.values()), row
        assert values["train_loss"] > 0 and values["test_loss"] > 0
        # A fraction of the 500 test images.
        assert 0.0 <= values["test_accuracy"] <= 1.0
        assert values["test_accuracy"] * 500 == pytest.approx(round(values["test_accuracy"] * 500))
        assert values["epoch_seconds"] > 0
        assert values["samples_per_second"] == pytest.approx(2000 / values["epoch_seconds"])
    # It learns: both losses fall from the first epoch to the second.
    assert float(epochs[1]["train_loss"]) < float(epochs[0]["train_loss"])
    assert float(epochs[1]["test_loss"]) < float(epochs[0]["test_loss"])

    record = json.loads((run / "run.json").read_text())
    assert record["run_id"] == "base"
    assert record["params"] == {**settings.defaults()["train"], "devices": ["cpu"] * 2, "epochs": 2}
    assert record["swept"] == []
    assert record["setup"]["devices"] == ["cpu", "cpu"]
    assert record["setup"]["data_dir"] == DATA_DIR
    assert record["setup"]["data_md5"] == {
        name: hashlib.md5((done / DATA_DIR / name).read_bytes()).hexdigest() for name in FILES
    }
    (attempt,) = record["attempts"]
    assert attempt["start_epoch"] == 1 and "stopped" not in attempt


def test_training_log_has_the_tutorials_lines(done):
    log = (done / "results/logs/train_model_parallel/base.log").read_text()
    tutorial = [line for line in log.splitlines() if line.startswith("Epoch [")]
    assert len(tutorial) == 2, log
    for line in tutorial:
        assert TUTORIAL_LINE.match(line), line
    epochs = read_csv(done / "results/runs/base/epochs.csv")
    assert tutorial == [
        f"Epoch [{row['epoch']}/2], Loss: {float(row['train_loss']):.4f}" for row in epochs
    ]
    assert "devices: ['cpu', 'cpu'] (as configured)" in log
    assert "Training finished." in log


def test_tables(done):
    tables = done / "results/tables"
    epochs = read_csv(tables / "epochs.csv")
    assert [(row["run_id"], row["epoch"]) for row in epochs] == [("base", "1"), ("base", "2")]
    run_epochs = read_csv(done / "results/runs/base/epochs.csv")
    for gathered, original in zip(epochs, run_epochs):
        for column in ("train_loss", "test_loss", "test_accuracy"):
            assert float(gathered[column]) == pytest.approx(float(original[column]), rel=1e-12)

    runs = read_csv(tables / "runs.csv")
    assert [row["run_id"] for row in runs] == ["base"]
    assert float(runs[0]["final_test_accuracy"]) == pytest.approx(
        float(run_epochs[-1]["test_accuracy"])
    )
    assert runs[0]["epochs"] == "2"

    summary = read_csv(tables / "summary.csv")
    assert len(summary) == 1
    assert summary[0]["n_seeds"] == "1"
    accuracy = float(run_epochs[-1]["test_accuracy"])
    assert float(summary[0]["final_test_accuracy_mean"]) == pytest.approx(accuracy)

    markdown = (tables / "summary.md").read_text()
    assert f"{100 * accuracy:.2f}" in markdown or f"{100 * accuracy:.1f}" in markdown
    assert "\\begin{tabular}" in (tables / "summary.tex").read_text()
    assert (tables / "provenance.csv").stat().st_size > 0


def test_figures(done):
    figures = done / "results/figures"
    for name in ("loss", "accuracy", "throughput"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name


def test_report_then_nothing_left_to_do(done):
    report = snakemake(
        done, "--configfile", "overlay.yaml", "--report", "results/report.html", limit=300
    )
    assert report.returncode == 0, output_of(report)
    html = (done / "results/report.html").read_text(errors="replace")
    assert "These results come from SYNTHETIC data" in html
    assert "2 epochs" in html  # the description is rendered with this run's config
    assert "<html" in html.lower()

    again = snakemake(done, "-n", "--configfile", "overlay.yaml", limit=300)
    assert again.returncode == 0, output_of(again)
    assert "Nothing to be done" in again.stdout + again.stderr, output_of(again)
