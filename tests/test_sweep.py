"""A sweep end to end: one job per combination, tables, figures and the report."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow
from conftest import run_snakemake as snakemake

SWEEP = {"lr": [0.01, 0.003], "seed": [0, 1]}
RUN_IDS = ["lr=0.003_seed=0", "lr=0.003_seed=1", "lr=0.01_seed=0", "lr=0.01_seed=1"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("sweep") / "wf")
    overlay = {
        "data": {
            "dir": "resources/synthetic",
            "synthetic": {"train_size": 1500, "test_size": 400, "seed": 0},
        },
        "train": {"epochs": 3, "devices": ["cpu", "cpu"]},
        "sweep": SWEEP,
        "resources": {"train_model_parallel": {"cpus_per_task": 1}},
    }
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake(workdir, "--profile", "profiles/local", "--configfile", "overlay.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_one_run_folder_per_combination(swept):
    assert sorted(p.name for p in (swept / "results/runs").iterdir()) == RUN_IDS
    for run in RUN_IDS:
        record = json.loads((swept / f"results/runs/{run}/run.json").read_text())
        lr, seed = run.split("_")
        assert record["params"]["lr"] == float(lr.split("=")[1])
        assert record["params"]["seed"] == int(seed.split("=")[1])
        assert record["swept"] == ["lr", "seed"]


def test_tables_match_the_runs(swept):
    epochs = read_csv(swept / "results/tables/epochs.csv")
    assert len(epochs) == 4 * 3
    runs = {r["run_id"]: r for r in read_csv(swept / "results/tables/runs.csv")}
    assert sorted(runs) == RUN_IDS
    finals = {}
    for run in RUN_IDS:
        rows = read_csv(swept / f"results/runs/{run}/epochs.csv")
        finals[run] = float(rows[-1]["test_accuracy"])
        assert float(runs[run]["final_test_accuracy"]) == finals[run]
    summary = {r["lr"]: r for r in read_csv(swept / "results/tables/summary.csv")}
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
    markdown = (swept / "results/tables/summary.md").read_text()
    assert "0.003" in markdown and "0.01" in markdown
    assert "\\toprule" in (swept / "results/tables/summary.tex").read_text()
    provenance = read_csv(swept / "results/tables/provenance.csv")
    assert sorted(r["run_id"] for r in provenance) == RUN_IDS


def test_figures_and_report(swept):
    for name in ("loss", "accuracy", "throughput"):
        assert (swept / f"results/figures/{name}.pdf").read_bytes().startswith(b"%PDF")
        assert (swept / f"results/figures/{name}.png").stat().st_size > 10_000
    result = snakemake(swept, "--configfile", "overlay.yaml", "--report", "results/report.html")
    assert result.returncode == 0, result.stdout + result.stderr
    html = (swept / "results/report.html").read_text()
    for expected in ("Training curves", "Tables", "Provenance", "SYNTHETIC"):
        assert expected in html, expected


def test_adding_a_value_keeps_existing_runs(swept):
    overlay = yaml.safe_load((swept / "overlay.yaml").read_text())
    overlay["sweep"]["seed"] = [0, 1, 2]
    (swept / "more.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake(swept, "-n", "--profile", "profiles/local", "--configfile", "more.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = [
        line.split("results/runs/")[1].split("/")[0]
        for line in result.stdout.splitlines()
        if "output: results/runs/" in line
    ]
    # Only the two new runs train; the four existing ones are kept as they are.
    assert sorted(planned) == ["lr=0.003_seed=2", "lr=0.01_seed=2"]


def test_moving_the_checkout_or_the_signal_margin_reruns_nothing(swept, tmp_path):
    overlay = yaml.safe_load((swept / "overlay.yaml").read_text())
    overlay["resources"]["train_model_parallel"]["signal_seconds"] = 60
    (swept / "margin.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake(swept, "-n", "--profile", "profiles/local", "--configfile", "margin.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr
    # A copy elsewhere (mtimes kept, as rsync -a or cp -a keep them).
    moved = tmp_path / "moved"
    shutil.copytree(swept, moved, symlinks=True)
    result = snakemake(moved, "-n", "--profile", "profiles/local", "--configfile", "overlay.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def planned_runs(output: str) -> list[str]:
    return sorted(
        line.split("results/runs/")[1].split("/")[0]
        for line in output.splitlines()
        if "output: results/runs/" in line
    )


def test_a_data_file_fetched_again_retrains_nothing_other_data_retrain_all(swept, tmp_path):
    """Checksums decide, not timestamps: a deleted file comes back with the same bytes and
    only the new runs train; data with other sums retrain every run."""
    work = tmp_path / "copy"
    shutil.copytree(swept, work, symlinks=True)
    (work / "resources/synthetic/train-images-idx3-ubyte.gz").unlink()
    old = {run: (work / f"results/runs/{run}/epochs.csv").stat() for run in RUN_IDS}
    overlay = yaml.safe_load((work / "overlay.yaml").read_text())
    overlay["sweep"]["seed"] = [0, 1, 2]
    (work / "more.yaml").write_text(yaml.safe_dump(overlay))
    args = ["--profile", "profiles/local", "--configfile", "more.yaml"]
    dry = snakemake(work, "-n", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "rule download_fashion_mnist:" in dry.stdout
    assert planned_runs(dry.stdout) == ["lr=0.003_seed=2", "lr=0.01_seed=2"]
    result = snakemake(work, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    for run, stat in old.items():
        assert (work / f"results/runs/{run}/epochs.csv").stat().st_mtime_ns == stat.st_mtime_ns
    assert (work / "resources/synthetic/train-images-idx3-ubyte.gz").is_file()
    # Other data (another synthetic seed, so other sums): every run trains again.
    overlay["data"]["synthetic"]["seed"] = 1
    (work / "other.yaml").write_text(yaml.safe_dump(overlay))
    dry = snakemake(work, "-n", "--profile", "profiles/local", "--configfile", "other.yaml")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert len(planned_runs(dry.stdout)) == 6
