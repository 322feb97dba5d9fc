"""The report people read: tables readable inside it (HTML, sortable, CSV still attached),
per-run pages under labels naming the swept parameters, captions, and a landing paragraph
saying what was run, on what, how many runs and seeds, SYNTHETIC or not, and whether
verification passed (fmnist/htmltables.py, fmnist/report_pages.py, workflow/report/)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import copy_workflow, run_snakemake
from fake_runs import write_three_seeds, write_tutorial_log
from fmnist import htmltables, labels, report_pages
from fmnist.gathering import gather_runs

OVERLAY = {
    "data": {"dir": "resources/synthetic", "synthetic": {"train_size": 2000, "test_size": 500}},
    "train": {"epochs": 2, "devices": ["cpu", "cpu"]},
    "sweep": {"seed": [0, 1]},
    "resources": {"train_model_parallel": {"cpus_per_task": 1}},
    "verify": {"runs": "all"},
}


# --------------------------------------------------------------------------- pieces


def test_cells_show_numbers_readably_and_sort_by_their_exact_value():
    assert htmltables.cell(0.8123456789) == (
        '<td class="num" data-sort="0.8123456789" title="0.8123456789">0.812346</td>'
    )
    assert htmltables.cell(2.0).endswith(">2</td>")
    assert htmltables.cell(1.7763568394002505e-15).endswith(">1.78e-15</td>")
    assert htmltables.cell(float("nan")) == '<td class="missing" data-sort="">–</td>'
    assert htmltables.cell("<b>") == "<td>&lt;b&gt;</td>"
    assert htmltables.cell(True) == "<td>true</td>"


def test_a_page_is_self_contained_and_sortable():
    page = htmltables.page("T", htmltables.table(pd.DataFrame({"a": [2, 1], "b": ["x", "y"]})))
    assert page.startswith("<!DOCTYPE html>") and "<th>a</th><th>b</th>" in page
    assert 'class="sortable"' in page and "addEventListener" in page
    assert "http" not in page  # nothing fetched from the network


def test_labels_name_the_swept_parameters():
    runs = {"lr=0.01_seed=1": {"lr": 0.01, "seed": 1, "devices": ["cpu", "cpu"]}}
    assert labels.run_labels("lr=0.01_seed=1", runs, ["seed", "lr"]) == {"lr": "0.01", "seed": "1"}
    assert labels.run_labels("base", {"base": {}}, []) == {"run": "base"}


def test_gathering_writes_the_pages_from_the_tables_it_writes(tmp_path):
    three_seeds = write_three_seeds(tmp_path)
    log = write_tutorial_log(tmp_path / "tutorial.log")
    out = tmp_path / "tables"
    (out / "run_pages").mkdir(parents=True)
    (out / "run_pages" / "gone.html").write_text("a run no longer gathered")
    gather_runs([*three_seeds, log], out, pages=True)
    assert sorted(p.name for p in (out / "run_pages").iterdir()) == sorted(
        [f"{p.name}.html" for p in three_seeds] + ["tutorial.html"]
    )
    summary = (out / "summary.html").read_text()
    assert "82.00 ± 2.00" in summary and "tutorial log" in summary
    runs = pd.read_csv(out / "runs.csv")
    page = (out / "runs.html").read_text()
    for value in runs["final_test_accuracy"].dropna():
        assert f">{htmltables.format_number(value)}</td>" in page
    overview = (out / "overview.rst").read_text()
    assert overview.startswith("This report covers 4 runs (2 configurations × 3 seeds: 0, 1, 2)")
    assert "checksums were not recorded" in overview  # the fake runs record no MD5 sums
    assert (
        "<h1>Run lr=0.001\\_seed=1</h1>" not in (out / "run_pages/lr=0.001_seed=1.html").read_text()
    )


def test_rst_escape():
    assert report_pages.rst_escape("log_softmax *x* `y`") == r"log\_softmax \*x\* \`y\`"


# --------------------------------------------------------------------------- the report


def ok(result) -> None:
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def report_data(html: str) -> tuple[dict, str]:
    """The report's results (path -> entry with caption, labels, data URI) and landing page."""
    results = json.loads(re.search(r"^\s*var results = (\{.*\});?\s*$", html, re.M)[1])
    landing = json.loads(re.search(r"^\s*var workflow_desc = (\".*\");?\s*$", html, re.M)[1])
    return results, landing


def embedded(entry: dict) -> str:
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("report") / "wf")
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    common = ["--profile", "profiles/local", "--cores", "2", "--configfile", "overlay.yaml"]
    ok(run_snakemake(workdir, *common))
    ok(run_snakemake(workdir, "verify", *common))
    ok(run_snakemake(workdir, "--configfile", "overlay.yaml", "--report", "results/report.html"))
    html = (workdir / "results/report.html").read_text()
    return workdir, *report_data(html)


def test_the_landing_paragraph_says_what_on_what_how_many_synthetic_and_verified(report):
    workdir, _, landing = report
    text = re.sub(r"<[^>]+>", "", landing)
    assert "This report covers 2 runs (1 configuration × 2 seeds: 0, 1)" in text
    assert "Linear 784→200, log_softmax, Linear 200→10" in text and "2 epochs" in text
    assert "ran locally (no scheduler), with no GPU and 1 CPU core per run" in text
    cpu = json.loads((workdir / "results/runs/seed=0/run.json").read_text())
    assert cpu["attempts"][-1]["device_names"][0] in text
    assert "These results come from SYNTHETIC data" in text
    assert "Verification passed: 2 of 2 run(s) (seed=0, seed=1) re-run from scratch" in text
    for section in ("Tables", "Runs", "Compute", "Reproduction", "Provenance"):
        assert f"<strong>{section}</strong>" in landing


def test_tables_are_readable_in_the_report_with_their_numbers(report):
    workdir, results, _ = report
    runs = pd.read_csv(workdir / "results/tables/runs.csv")
    page = embedded(results["results/tables/runs.html"])
    for value in runs["final_test_accuracy"]:
        assert f">{htmltables.format_number(value)}</td>" in page
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
    assert "Test accuracy per epoch" in captions["accuracy.pdf"]
    assert all(entry["caption"].strip() for entry in results.values()), [
        p for p, e in results.items() if not e["caption"].strip()
    ]


def test_each_run_has_a_page_under_its_swept_parameters(report):
    _, results, _ = report
    pages = {p: e for p, e in results.items() if "/run_pages/" in p}
    assert sorted(e["labels"]["seed"] for e in pages.values()) == ["0", "1"]
    page = embedded(pages["results/tables/run_pages/seed=1.html"])
    assert "<h1>Run seed=1</h1>" in page and "<h2>Epochs</h2>" in page


def test_a_made_verification_is_kept_and_nothing_is_left_to_do(report):
    workdir, _, _ = report
    again = run_snakemake(workdir, "-n", "--configfile", "overlay.yaml")
    ok(again)
    assert "Nothing to be done" in again.stdout + again.stderr
