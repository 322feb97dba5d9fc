"""Tests of fmnist.report.paper: the summary as Markdown and LaTeX."""

from __future__ import annotations

import math

from fmnist.report import paper, tables
from fmnist.report.gathering import load_runs
from helpers import (
    three_epochs,
    write_run,
    write_several_configs,
    write_three_seeds,
    write_tutorial_log,
)


def formatted(paths) -> tuple[str, str]:
    """(summary.md, summary.tex) of the runs at ``paths``."""
    result = tables.build_tables(load_runs(paths))
    return (
        paper.summary_markdown(result.summary, result.config_columns),
        paper.summary_latex(result.summary, result.config_columns),
    )


def test_summary_md_and_tex(tmp_path):
    md, tex = formatted(write_three_seeds(tmp_path))
    half = 100 * 4.302652730 * 0.02 / math.sqrt(3)
    lines = md.splitlines()
    # One configuration: its settings are in the note, the results come first.
    assert lines[0].startswith("| n ") and "devices" not in lines[0]
    assert "Test accuracy (%)" in lines[0]
    row = lines[2]
    assert "82.00 ± 2.00" in row
    assert f"[{82 - half:.2f}, {82 + half:.2f}]" in row
    assert "0.3000 ± 0.1000" in row  # train loss
    assert "0.4000 ± 0.1000" in row  # test loss
    assert "| 3 " in row  # n
    assert "95% CI: Student-t, clipped to [0, 100] %" in md
    note = md.splitlines()[-1]
    assert note.endswith(
        "n = number of seeds. Settings: devices=auto, epochs=3, batch_size=100, "
        "lr=0.001, hidden_sizes=200, tutorial_double_scaling=false, "
        "microbatches=1, adam_impl=for_loop."
    )  # booleans as run ids write them
    assert "% Settings: devices=auto" in tex

    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"batch\_size" in tex and r"for\_loop" in tex
    assert r"Test accuracy (\%)" in tex
    assert r"82.00 $\pm$ 2.00" in tex
    assert r"Student-t, clipped to [0, 100] \%" in tex
    body = [line for line in tex.splitlines() if "82.00" in line][0]
    assert body.endswith(r"\\")
    header = [line for line in tex.splitlines() if "Test accuracy" in line][0]
    assert body.count("&") == header.count("&") == 4


def test_grouping_several_configs(tmp_path):
    md, _ = formatted(write_several_configs(tmp_path))
    assert "| lr" in md
    assert "82.00 ± 2.00" in md
    assert "72.00 ± 2.83" in md
    assert "| 50.00 " in md  # n=1: no ± part
    assert "Same in all configurations: devices=auto, epochs=3" in md
    assert md.rstrip().endswith("adam_impl=for_loop.")
    assert "hidden_sizes=200" in md
    assert "tutorial_double_scaling=false" in md


def test_clipped_interval_is_shown_within_100_percent(tmp_path):
    paths = [
        write_run(tmp_path, f"s={seed}", three_epochs(acc), seed=seed)
        for seed, acc in [(0, 0.97), (1, 0.995)]
    ]
    md, _ = formatted(paths)
    assert ", 100.00]" in md


def test_tutorial_log_row(tmp_path):
    md, tex = formatted([*write_three_seeds(tmp_path), write_tutorial_log(tmp_path / "t.log")])
    assert "tutorial log" in md and "tutorial log" in tex
    header = [cell.strip() for cell in md.splitlines()[0].split("|")]
    assert header[1:3] == ["configuration", "n"]  # base, tutorial log
    assert "| base " in md
    assert "| –" in md  # a metric the log does not have


def test_latex_escape():
    assert paper.latex_escape("a_b & 5% #1 $x$") == r"a\_b \& 5\% \#1 \$x\$"
    assert paper.latex_escape("–") == "--"


def test_cell_text():
    assert paper.cell_text(0.001) == "0.001"
    assert paper.cell_text(200.0) == "200"
    assert paper.cell_text(float("nan")) == "–"
    assert paper.cell_text(True) == "true"
    assert paper.cell_text("for_loop") == "for_loop"
