"""The whole workflow, end to end, on the CPU and offline, as a user runs it: the shared
finished workflow (conftest.py: a sweep of two learning rates × two seeds on SYNTHETIC data,
generated and fetched through the download rule from a local-folder mirror, 2 epochs on
[cpu, cpu]; two runs verified; the report built). Tests that change it take a copy."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SHARED_RUNS, SHARED_SWEEP, SHARED_VERIFIED
from fmnist.config import settings
from fmnist.data.idx import FILE_NAMES
from fmnist.report import htmltables
from helpers import run_snakemake

pytestmark = pytest.mark.workflow

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
TUTORIAL_LINE = re.compile(r"^Epoch \[\d+/2\], Loss: \d+\.\d{4}$")
FIRST = "lr=0.01_seed=0"  # the defaults' lr and seed


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def done(finished_workflow) -> Path:
    return finished_workflow.ok()


def test_the_run_has_every_job_and_runs_scripts_from_the_checkout(finished_workflow):
    done = finished_workflow.ok()
    log = finished_workflow.run.stderr
    for rule in (
        "make_synthetic_fashion_mnist",
        "download_fashion_mnist",
        "train_model_parallel",
        "gather_tables",
        "render_report_pages",
        "plot_training_curves",
        "plot_pipeline_timeline",
    ):
        assert f"rule {rule}:" in log or f"localrule {rule}:" in log, rule
    assert re.search(r"(\d+) of \1 steps \(100%\) done", log), log[-3000:]
    # The scripts run from the copied workflow (workflow.basedir), named relative to the
    # working directory so that a clone elsewhere reruns nothing.
    assert "python workflow/scripts/train.py --data-dir resources/synthetic" in log
    assert sorted(p.name for p in (done / "results/runs").iterdir()) == SHARED_RUNS


def test_data_came_through_the_download_rule_from_the_synthetic_mirror(done):
    log = (done / "results/logs/download_fashion_mnist.log").read_text()
    lines = log.splitlines()
    assert len(lines) == 4, log
    sums = {}
    for line in (done / MIRROR / "MD5SUMS").read_text().splitlines():
        value, name = line.split()
        sums[name] = value
    assert sorted(sums) == sorted(FILE_NAMES)
    for name, line in zip(FILE_NAMES, lines):
        assert line.startswith(f"{DATA_DIR}/{name}: fetched from {MIRROR}/{name} in "), line
        assert line.endswith(", MD5 OK"), line
        assert hashlib.md5((done / DATA_DIR / name).read_bytes()).hexdigest() == sums[name]
    assert "mirror failed" not in log
    synthetic_log = (done / "results/logs/make_synthetic_fashion_mnist.log").read_text()
    assert "SYNTHETIC DATA" in synthetic_log
    assert (done / MIRROR / "SYNTHETIC_DATA_README.txt").is_file()
    assert not list((done / DATA_DIR).glob(".*part*"))


def test_run_outputs(done):
    run = done / f"results/runs/{FIRST}"
    for name in ("epochs.csv", "run.json", "model.pt", "timeline.csv"):
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
    assert record["run_id"] == FIRST
    assert record["params"] == {**settings.defaults()["train"], "devices": ["cpu"] * 2, "epochs": 2}
    assert record["swept"] == ["lr", "seed"]
    assert record["setup"]["devices"] == ["cpu", "cpu"]
    assert record["setup"]["data_dir"] == DATA_DIR
    assert record["setup"]["data_md5"] == {
        name: hashlib.md5((done / DATA_DIR / name).read_bytes()).hexdigest() for name in FILE_NAMES
    }
    (attempt,) = record["attempts"]
    assert attempt["start_epoch"] == 1 and "stopped" not in attempt
    for run_id in SHARED_RUNS:
        record = json.loads((done / f"results/runs/{run_id}/run.json").read_text())
        lr, seed = run_id.split("_")
        assert record["params"]["lr"] == float(lr.split("=")[1])
        assert record["params"]["seed"] == int(seed.split("=")[1])


def test_training_log_has_the_tutorials_lines(done):
    log = (done / f"results/logs/train_model_parallel/{FIRST}.log").read_text()
    tutorial = [line for line in log.splitlines() if line.startswith("Epoch [")]
    assert len(tutorial) == 2, log
    for line in tutorial:
        assert TUTORIAL_LINE.match(line), line
    epochs = read_csv(done / f"results/runs/{FIRST}/epochs.csv")
    assert tutorial == [
        f"Epoch [{row['epoch']}/2], Loss: {float(row['train_loss']):.4f}" for row in epochs
    ]
    assert "devices: ['cpu', 'cpu'] (as configured)" in log
    assert "Training finished." in log


def test_tables_match_the_runs(done):
    tables = done / "results/tables"
    epochs = read_csv(tables / "epochs.csv")
    assert len(epochs) == 4 * 2
    assert [(r["run_id"], r["epoch"]) for r in epochs if r["run_id"] == FIRST] == [
        (FIRST, "1"),
        (FIRST, "2"),
    ]
    runs = {r["run_id"]: r for r in read_csv(tables / "runs.csv")}
    assert sorted(runs) == SHARED_RUNS
    finals = {}
    for run in SHARED_RUNS:
        rows = read_csv(done / f"results/runs/{run}/epochs.csv")
        gathered = [r for r in epochs if r["run_id"] == run]
        for mine, original in zip(gathered, rows):
            for column in ("train_loss", "test_loss", "test_accuracy"):
                assert float(mine[column]) == float(original[column])
        finals[run] = float(rows[-1]["test_accuracy"])
        assert float(runs[run]["final_test_accuracy"]) == finals[run]
        assert runs[run]["epochs"] == "2"
    summary = {r["lr"]: r for r in read_csv(tables / "summary.csv")}
    assert sorted(summary) == ["0.003", "0.01"]
    for lr, row in summary.items():
        values = [finals[f"lr={lr}_seed={s}"] for s in (0, 1)]
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values))  # ddof=1 with n=2
        assert int(row["n_seeds"]) == 2
        assert float(row["final_test_accuracy_mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(row["final_test_accuracy_std"]) == pytest.approx(std, rel=1e-9, abs=1e-15)
        half = 12.706204736 * std / math.sqrt(2)  # t(0.975, 1)
        # Student-t, clipped to the accuracy's range [0, 1]
        high = min(mean + half, 1.0)
        assert float(row["final_test_accuracy_ci95_high"]) == pytest.approx(high, rel=1e-8)
        assert float(row["final_test_accuracy_ci95_low"]) == pytest.approx(
            max(mean - half, 0.0), rel=1e-8, abs=1e-15
        )
    markdown = (tables / "summary.md").read_text()
    assert "0.003" in markdown and "0.01" in markdown
    mean = float(summary["0.01"]["final_test_accuracy_mean"])
    assert f"{100 * mean:.2f}" in markdown
    assert "\\toprule" in (tables / "summary.tex").read_text()
    provenance = read_csv(tables / "provenance.csv")
    assert sorted(r["run_id"] for r in provenance) == SHARED_RUNS


def test_figures(done):
    figures = done / "results/figures"
    for name in ("loss", "accuracy", "throughput"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (figures / f"{name}.png").stat().st_size > 10_000
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    for run in SHARED_RUNS:
        assert (figures / f"pipeline/{run}.pdf").read_bytes()[:5] == b"%PDF-", run


# --------------------------------------------------------------------------- the report


def report_data(html: str) -> tuple[dict, str]:
    """The report's results (path -> entry with caption, labels, data URI) and landing page."""
    results = json.loads(re.search(r"^\s*var results = (\{.*\});?\s*$", html, re.M)[1])
    landing = json.loads(re.search(r"^\s*var workflow_desc = (\".*\");?\s*$", html, re.M)[1])
    return results, landing


def embedded(entry: dict) -> str:
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()


@pytest.fixture(scope="module")
def report(done):
    html = (done / "results/report.html").read_text()
    assert "<html" in html.lower()
    return done, *report_data(html)


def test_the_report_zip_opens_offline_anywhere_with_every_file_it_names(done, tmp_path):
    """`--report results/report.zip`: one folder with report.html, which loads nothing from
    the network, and every file it links to beside it."""
    with zipfile.ZipFile(done / "results/report.zip") as archive:
        archive.extractall(tmp_path / "elsewhere")
    html = (tmp_path / "elsewhere/report/report.html").read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?:", html)
    linked = set(re.findall(r"data/raw/[0-9a-f]+/[^\"'\\]+", html))
    assert {Path(p).name for p in linked} >= {"loss.png", "accuracy.png", "summary.csv"}
    missing = [p for p in linked if not (tmp_path / "elsewhere/report" / p).is_file()]
    assert not missing, missing
    # The same entries as the one-file HTML report's.
    assert (
        report_data(html)[0].keys()
        == report_data((done / "results/report.html").read_text())[0].keys()
    )


def test_the_landing_paragraph_says_what_on_what_how_many_synthetic_and_verified(report):
    workdir, _, landing = report
    text = re.sub(r"<[^>]+>", "", landing)
    assert "This report covers 4 runs (2 configurations × 2 seeds: 0, 1)" in text
    assert "Linear 784→200, log_softmax, Linear 200→10" in text and "2 epochs" in text
    assert "ran locally (no scheduler), with no GPU and 1 CPU core per run" in text
    cpu = json.loads((workdir / f"results/runs/{FIRST}/run.json").read_text())
    assert cpu["attempts"][-1]["device_names"][0] in text
    assert "These results come from SYNTHETIC data" in text
    verified = ", ".join(SHARED_VERIFIED)
    assert f"Verification passed: 2 of 2 run(s) ({verified}) re-run from scratch" in text
    for section in ("Tables", "Runs", "Compute", "Reproduction", "Provenance", "Pipeline"):
        assert f"<strong>{section}</strong>" in landing


def test_tables_are_readable_in_the_report_with_their_numbers(report):
    workdir, results, _ = report
    runs = pd.read_csv(workdir / "results/tables/runs.csv")
    page = embedded(results["results/tables/runs.html"])
    for value in runs["final_test_accuracy"]:  # a fraction in the CSV, % on the page
        assert f">{htmltables.format_number(value * 100)}</td>" in page
    summary = embedded(results["results/tables/summary.html"])
    accuracy = pd.read_csv(workdir / "results/tables/summary.csv")["final_test_accuracy_mean"][0]
    assert f"{100 * accuracy:.2f} ± " in summary  # the paper's table
    compute = embedded(results["results/tables/compute.html"])
    statement = (workdir / "results/tables/compute.md").read_text().split("\n")[0]
    assert statement.removeprefix("**Compute resources.** ").replace("'", "&#x27;") in compute
    reproduction = embedded(results["results/verify/reproduction.html"])
    assert reproduction.count('<tr class="pass">') == 2 and "banner pass" in reproduction
    # The CSVs stay attached for download, beside the pages.
    for table in ("summary", "runs", "epochs", "compute", "provenance"):
        assert any(p.endswith(f"/{table}.csv") for p in results), table
    assert "results/verify/reproduction.csv" in results


def test_every_table_and_figure_keeps_its_caption(report):
    _, results, _ = report
    captions = {Path(path).name: entry["caption"] for path, entry in results.items()}
    assert "One row per configuration" in captions["summary.html"]
    assert "One row per run:" in captions["runs.html"]
    assert "compute statement" in captions["compute.html"]
    assert "byte for byte" in captions["reproduction.html"]
    assert "Test accuracy (%) per epoch" in captions["accuracy.pdf"]
    assert all(entry["caption"].strip() for entry in results.values()), [
        p for p, e in results.items() if not e["caption"].strip()
    ]


def test_each_run_has_a_page_under_its_swept_parameters(report):
    _, results, _ = report
    pages = {p: e for p, e in results.items() if "/run_pages/" in p}
    assert sorted((e["labels"]["lr"], e["labels"]["seed"]) for e in pages.values()) == [
        ("0.003", "0"),
        ("0.003", "1"),
        ("0.01", "0"),
        ("0.01", "1"),
    ]
    page = embedded(pages["results/tables/run_pages/lr=0.01_seed=1.html"])
    assert "<h1>Run lr=0.01_seed=1</h1>" in page and "<h2>Epochs</h2>" in page
    figures = {p: e["labels"] for p, e in results.items() if "/figures/pipeline/" in p}
    assert figures["results/figures/pipeline/lr=0.01_seed=1.pdf"] == {
        "lr": "0.01",
        "seed": "1",
        "format": "vector PDF",
    }
    assert len(figures) == 8  # each run's figure as image and as PDF


def test_nothing_is_left_to_do_and_moving_the_checkout_or_the_margin_reruns_nothing(
    workflow_copy, tmp_path
):
    """A made verification is kept up to date, so nothing is left; a copy elsewhere (times
    kept, as rsync -a or cp -a keep them) and another signal margin rerun nothing either."""
    again = run_snakemake(workflow_copy, "-n", "--configfile", "overlay.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    overlay = yaml.safe_load((workflow_copy / "overlay.yaml").read_text())
    overlay["resources"]["train_model_parallel"]["signal_seconds"] = 60
    (workflow_copy / "margin.yaml").write_text(yaml.safe_dump(overlay))
    result = run_snakemake(workflow_copy, "-n", "--configfile", "margin.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout + result.stderr
    moved = tmp_path / "moved"
    shutil.copytree(workflow_copy, moved, symlinks=True)
    result = run_snakemake(moved, "-n", "--configfile", "overlay.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout + result.stderr


def planned_runs(output: str) -> list[str]:
    return sorted(
        line.split("results/runs/")[1].split("/")[0]
        for line in output.splitlines()
        if "output: results/runs/" in line
    )


def test_a_data_file_fetched_again_retrains_nothing_other_data_retrain_all(workflow_copy):
    """Checksums decide, not timestamps: a deleted file comes back with the same bytes and
    only the new runs train; data with other sums retrain every run."""
    work = workflow_copy
    (work / "resources/synthetic/train-images-idx3-ubyte.gz").unlink()
    old = {run: (work / f"results/runs/{run}/epochs.csv").stat() for run in SHARED_RUNS}
    overlay = yaml.safe_load((work / "overlay.yaml").read_text())
    overlay["sweep"] = {**SHARED_SWEEP, "seed": [0, 1, 2]}
    (work / "more.yaml").write_text(yaml.safe_dump(overlay))
    args = ["--profile", "profiles/local", "--configfile", "more.yaml"]
    dry = run_snakemake(work, "-n", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "rule download_fashion_mnist:" in dry.stdout
    # Only the two new runs train; the four existing ones are kept as they are.
    assert planned_runs(dry.stdout) == ["lr=0.003_seed=2", "lr=0.01_seed=2"]
    result = run_snakemake(work, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    for run, stat in old.items():
        assert (work / f"results/runs/{run}/epochs.csv").stat().st_mtime_ns == stat.st_mtime_ns
    assert (work / "resources/synthetic/train-images-idx3-ubyte.gz").is_file()
    # Other data (another synthetic seed, so other sums): every run trains again.
    overlay["data"]["synthetic"]["seed"] = 1
    (work / "other.yaml").write_text(yaml.safe_dump(overlay))
    dry = run_snakemake(work, "-n", "--profile", "profiles/local", "--configfile", "other.yaml")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert len(planned_runs(dry.stdout)) == 6
