"""Tests of the command line workflow/scripts/plot.py (the figures: test_figures.py)."""

from __future__ import annotations

import os

import pandas as pd
from fmnist.report.gathering import gather_runs
from helpers import SCRIPTS_DIR, run_script, write_three_seeds, write_tutorial_log

SCRIPT = SCRIPTS_DIR / "plot.py"
FIGURES = ["loss", "accuracy", "throughput"]


def run_cli(*args, env=None):
    return run_script(SCRIPT, *args, env=env)


def tables(tmp_path):
    folder = tmp_path / "tables"
    gather_runs([*write_three_seeds(tmp_path), write_tutorial_log(tmp_path / "t.log")], folder)
    return folder


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0 and "--out-dir" in result.stdout


def test_cli_without_torch(tmp_path):
    folder, out = tables(tmp_path), tmp_path / "figs"
    # A fake torch that fails on import proves plot.py does not import it.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('plot.py must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    args = ["--epochs", folder / "epochs.csv", "--runs", folder / "runs.csv", "--out-dir", out]
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(f"{n}.{e}" for n in FIGURES for e in ("png", "pdf"))
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_tables_that_do_not_fit_are_an_error_message(tmp_path):
    folder, out = tables(tmp_path), tmp_path / "figs"
    old_runs = tmp_path / "old_runs.csv"  # as gather.py wrote it before the label column
    pd.read_csv(folder / "runs.csv").drop(columns="configuration").to_csv(old_runs, index=False)
    args = ["--epochs", folder / "epochs.csv", "--out-dir", out]
    for runs, message in [
        (old_runs, "runs table has no column configuration"),
        (tmp_path / "missing.csv", "missing.csv"),
    ]:
        result = run_cli(*args, "--runs", runs)
        assert result.returncode == 1
        assert result.stderr.startswith("plot.py: error: ") and message in result.stderr
        assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_table_lacking_a_column_or_holding_a_non_number_is_an_error_message(tmp_path):
    folder, out = tables(tmp_path), tmp_path / "figs"
    epochs = pd.read_csv(folder / "epochs.csv")
    cases = {
        "no_loss.csv": (epochs.drop(columns="train_loss"), "epochs table has no column train_loss"),
        "text.csv": (
            epochs.astype({"test_loss": object}).assign(
                test_loss=lambda df: df["test_loss"].where(df.index != 4, "fast")
            ),
            "epochs table, column test_loss, row 6: 'fast' is not a number",
        ),
    }
    for name, (table, message) in cases.items():
        table.to_csv(tmp_path / name, index=False)
        args = ["--epochs", tmp_path / name, "--runs", folder / "runs.csv", "--out-dir", out]
        result = run_cli(*args)
        assert result.returncode == 1, name
        assert result.stderr.startswith(f"plot.py: error: {tmp_path / name}, ")
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
