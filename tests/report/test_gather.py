"""Tests of the command line workflow/scripts/gather.py (the tables: test_tables.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import (
    SCRIPTS_DIR,
    run_script,
    three_epochs,
    write_run,
    write_three_seeds,
    write_tutorial_log,
)

SCRIPT = SCRIPTS_DIR / "gather.py"


def run_cli(*args, env=None):
    return run_script(SCRIPT, *args, env=env)


def fake_torch_env(tmp_path) -> dict:
    """An environment in which importing torch fails."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('gather.py must not import torch')\n")
    return {**os.environ, "PYTHONPATH": str(fake)}


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--out" in result.stdout and "--skip-bad-lines" in result.stdout


def test_cli_end_to_end_without_torch(tmp_path):
    three_seeds = write_three_seeds(tmp_path)
    log = write_tutorial_log(tmp_path / "tutorial.log")
    out = tmp_path / "tables"
    result = run_cli("--out", out, *three_seeds, log, env=fake_torch_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "compute.csv",
        "compute.md",
        "compute.tex",
        "epochs.csv",
        "provenance.csv",
        "runs.csv",
        "summary.csv",
        "summary.md",
        "summary.tex",
    ]
    runs = pd.read_csv(out / "runs.csv")
    assert runs["run_id"].tolist() == [p.name for p in three_seeds] + ["tutorial"]
    assert runs["configuration"].tolist() == ["base"] * 3 + ["tutorial log"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["final_test_accuracy_mean"][0] == pytest.approx(0.82, rel=1e-12)
    assert summary["n_seeds"].tolist() == [3, 1]
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 12
    # Provenance only for run folders: a tutorial log carries none.
    provenance = pd.read_csv(out / "provenance.csv")
    assert provenance["run_id"].tolist() == [p.name for p in three_seeds]
    assert np.allclose(
        epochs.loc[epochs["run_id"] == "lr=0.001_seed=2", "test_accuracy"],
        [0.74, 0.79, 0.84],
    )
    md = (out / "summary.md").read_text()
    assert "tutorial log" in md and "82.00 ± 2.00" in md


def test_skip_bad_lines_cli(tmp_path):
    log = write_tutorial_log(
        tmp_path / "bad.log",
        "Epoch [1/3], Loss: 0.6\nEpoch [2/1\nEpoch [2/3], Loss: 0.5\n"
        "Epoch [x/3], Loss: abc\nEpoch [3/3], Loss: 0.4\nTraining finished.\n",
    )
    failed = run_cli("--out", tmp_path / "out", log)
    assert failed.returncode == 1
    assert f"{log}:2: malformed" in failed.stderr
    assert not (tmp_path / "out" / "epochs.csv").exists()

    ok = run_cli("--out", tmp_path / "out", "--skip-bad-lines", log)
    assert ok.returncode == 0, ok.stderr
    assert "skipped 2 malformed line(s)" in ok.stderr
    assert "line 2, 4" in ok.stderr
    epochs = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["train_loss"].tolist() == [0.6, 0.5, 0.4]


def test_broken_run_folder_is_an_error_message(tmp_path):
    folder = write_run(tmp_path / "runs", "r", three_epochs(0.8))
    (folder / "run.json").unlink()
    result = run_cli("--out", tmp_path / "out", folder)
    assert result.returncode == 1
    assert result.stderr.startswith(f"gather.py: error: {folder / 'run.json'}: missing")
    assert "Traceback" not in result.stderr

    (folder / "run.json").write_text('{"format": 2}')
    result = run_cli("--out", tmp_path / "out", folder)
    assert result.returncode == 1
    assert f"{folder / 'run.json'}: key (top level): " in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_folder_still_training_is_skipped_with_skip_incomplete(tmp_path):
    """The README's `gather.py results/runs/*` while a run is still training."""
    write_three_seeds(tmp_path)
    training = write_run(tmp_path / "runs", "lr=0.001_seed=9", three_epochs(0.9)[:2], seed=9)
    (training / "run.json").unlink()
    (training / "checkpoint.pt").write_bytes(b"")
    runs = sorted((tmp_path / "runs").iterdir())
    failed = run_cli("--out", tmp_path / "out", *runs)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"gather.py: error: {training / 'run.json'}: missing: ")
    assert failed.stderr.endswith("(--skip-incomplete leaves it out)\n")
    assert not (tmp_path / "out").exists()

    ok = run_cli("--out", tmp_path / "out", "--skip-incomplete", *runs)
    assert ok.returncode == 0, ok.stderr
    assert f"gather: left out an incomplete run: {training / 'run.json'}: missing: " in ok.stderr
    assert f"run folder {training} has not finished training" in ok.stderr
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["run_id"].tolist() == [
        f"lr=0.001_seed={s}" for s in range(3)
    ]


def test_an_accuracy_above_1_is_refused_before_any_table(tmp_path):
    """A final accuracy of 5.0 once showed as 500.00 % in summary.md."""
    runs = write_three_seeds(tmp_path)
    bad = write_run(tmp_path / "runs", "lr=0.001_seed=9", three_epochs(5.0), seed=9)
    result = run_cli("--out", tmp_path / "out", "--skip-incomplete", *runs, bad)
    assert result.returncode == 1
    assert result.stderr == (
        f"gather.py: error: {bad / 'epochs.csv'}:2: column test_accuracy: 4.9 is greater "
        "than the maximum of 1\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_table_that_cannot_be_written_is_named_without_a_traceback(tmp_path):
    """A folder where summary.csv goes stands in for a full disk or a read-only folder: the
    first error is the one reported (the temporary file's cleanup does not hide it)."""
    runs = write_three_seeds(tmp_path)
    (tmp_path / "out" / "summary.csv").mkdir(parents=True)
    result = run_cli("--out", tmp_path / "out", *runs)
    assert result.returncode == 1
    assert result.stderr.endswith(
        f"gather.py: error: cannot write {tmp_path / 'out' / 'summary.csv'}: Is a directory\n"
    )
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob(".*.tmp-*"))


def test_a_nan_loss_in_a_tutorial_log_is_refused(tmp_path):
    log = write_tutorial_log(
        tmp_path / "nan.log", "Epoch [1/2], Loss: 0.6\nEpoch [2/2], Loss: nan\n"
    )
    result = run_cli("--out", tmp_path / "out", "--skip-bad-lines", "--skip-incomplete", log)
    assert result.returncode == 1
    assert result.stderr == f"gather.py: error: {log}:2: loss: 'nan' is not a finite number\n"
    assert not (tmp_path / "out").exists()


def test_importing_gather_imports_no_torch():
    code = (
        f"import sys; sys.path.insert(0, {str(SCRIPTS_DIR)!r}); import gather\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
