"""The report's pieces: HTML cells and pages (fmnist/report/htmltables.py), the pages made
from the gathered tables (fmnist/report/pages.py), labels. The report as a whole, built by
Snakemake: tests/workflow/test_end_to_end.py."""

from __future__ import annotations

import pandas as pd
from fmnist.report import htmltables, labels
from fmnist.report import pages as report_pages
from fmnist.report.gathering import gather_runs
from helpers import write_three_seeds, write_tutorial_log

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
    assert labels.figure_labels("lr=0.01_seed=1", runs, ["seed", "lr"], "vector PDF") == {
        "lr": "0.01",
        "seed": "1",
        "format": "vector PDF",
    }


def test_the_pages_are_made_from_the_tables_gathering_wrote(tmp_path):
    three_seeds = write_three_seeds(tmp_path)
    log = write_tutorial_log(tmp_path / "tutorial.log")
    out = tmp_path / "tables"
    (out / "run_pages").mkdir(parents=True)
    (out / "run_pages" / "gone.html").write_text("a run no longer gathered")
    gather_runs([*three_seeds, log], out)
    assert not (out / "summary.html").exists()  # gathering writes tables, not pages
    report_pages.write_pages(out, out, synthetic=False)
    assert sorted(p.name for p in (out / "run_pages").iterdir()) == sorted(
        [f"{p.name}.html" for p in three_seeds] + ["tutorial.html"]
    )
    summary = (out / "summary.html").read_text()
    assert "82.00 ± 2.00" in summary and "tutorial log" in summary
    runs = pd.read_csv(out / "runs.csv")
    page = (out / "runs.html").read_text()
    assert "<th>final_test_accuracy (%)</th>" in page and "<th>final_test_accuracy<" not in page
    for value in runs["final_test_accuracy"].dropna():  # fractions in the CSV, % on the page
        assert f">{htmltables.format_number(value * 100)}</td>" in page
    every_column = summary.split("summary.csv", 1)[1]
    assert "<th>final_test_accuracy_mean (%)</th>" in every_column and ">82</td>" in every_column
    run_page = (out / "run_pages" / f"{three_seeds[0].name}.html").read_text()
    assert (
        "<th>test_accuracy (%)</th>" in run_page and "<th>final_test_accuracy (%)</th>" in run_page
    )
    overview = (out / "overview.rst").read_text()
    assert overview.startswith("This report covers 4 runs (2 configurations × 3 seeds: 0, 1, 2)")
    assert "checksums were not recorded" in overview  # the fake runs record no MD5 sums
    assert "its stages all on one device (cpu)" in overview  # both stages on the CPU
    assert "adam_impl=for_loop. Compute totals: sums" in summary  # a full stop between
    assert (
        "<h1>Run lr=0.001\\_seed=1</h1>" not in (out / "run_pages/lr=0.001_seed=1.html").read_text()
    )


def test_the_landing_page_says_where_the_stages_ran():
    def placed(*layouts):
        return report_pages.placement(pd.DataFrame({"stage_devices": list(layouts)}))

    assert placed("cuda:0,cuda:1") == "its stages on their own devices (cuda:0+cuda:1)"
    assert placed("cpu,cpu", "cpu,cpu,cpu") == "its stages all on one device (cpu)"
    assert placed("cuda:0,cuda:0,cuda:1") == "its stages on cuda:0+cuda:0+cuda:1"
    assert placed(float("nan")) == "its stages' devices not recorded"


def test_rst_escape():
    assert report_pages.rst_escape("log_softmax *x* `y`") == r"log\_softmax \*x\* \`y\`"
