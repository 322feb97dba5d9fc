"""Tests of fmnist.rundir.tutorial_log: the tutorial's log converted to a runfiles.Run."""

from __future__ import annotations

import math

import pytest
from fmnist.rundir import runfiles, tutorial_log
from fmnist.rundir.runfiles import RunFileError
from helpers import TUTORIAL_LOG


def test_log_becomes_a_run_like_a_folder(tmp_path):
    log = tmp_path / "tutorial_run.log"
    log.write_text(TUTORIAL_LOG)
    run = tutorial_log.read_tutorial_log(log)
    assert isinstance(run, runfiles.Run)
    assert (run.run_id, run.source, run.params, run.record) == ("tutorial_run", log, {}, None)
    assert list(run.epochs) == runfiles.EPOCH_COLUMNS
    assert run.epochs["epoch"] == [1, 2, 3]
    assert run.epochs["train_loss"] == [0.5234, 0.4123, 0.39]
    for name in runfiles.EPOCH_COLUMNS[2:]:
        assert all(math.isnan(v) for v in run.epochs[name]), name
    assert run.skipped_lines == []


def test_truncated_number_is_fine(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("Epoch [1/10], Loss: 0.6\nEpoch [2/10], Loss: 0.5\nEpoch [3/10], Loss: 0.")
    columns, skipped = tutorial_log.parse_tutorial_log(log)
    assert columns["epoch"] == [1, 2, 3]
    assert columns["train_loss"] == [0.6, 0.5, 0.0]
    assert skipped == []


@pytest.mark.parametrize(
    "bad",
    [
        "Epoch [3/1",
        "Epoch [x/10], Loss: abc",
        "Epoch [3/10], Loss: abc",
        "Epoch [3/10], Loss:",
        "Epoch [3/10] Loss: 0.5",
        "Epoch [3/10], Loss: 0.5 extra",
        "Epoch [11/10], Loss: 0.5",
        "Epochs: 10",
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad):
    log = tmp_path / "bad.log"
    log.write_text(f"Epoch [1/10], Loss: 0.6\nhello\nEpoch [2/10], Loss: 0.5\n{bad}\n")
    with pytest.raises(RunFileError, match=rf"{log}:4: malformed"):
        tutorial_log.read_tutorial_log(log)


def test_skip_bad_lines_returns_their_numbers(tmp_path):
    log = tmp_path / "bad.log"
    log.write_text(
        "Epoch [1/10], Loss: 0.6\nEpoch [2/1\nEpoch [2/10], Loss: 0.5\n"
        "Epoch [x/10], Loss: abc\nEpoch [3/10], Loss: 0.4\nTraining finished.\n"
    )
    with pytest.raises(RunFileError, match=rf"{log}:2: malformed"):
        tutorial_log.parse_tutorial_log(log)
    columns, skipped = tutorial_log.parse_tutorial_log(log, skip_bad_lines=True)
    assert skipped == [2, 4]
    assert columns["epoch"] == [1, 2, 3]
    assert tutorial_log.read_tutorial_log(log, skip_bad_lines=True).skipped_lines == [2, 4]


def test_epochs_not_increasing(tmp_path):
    log = tmp_path / "dup.log"
    log.write_text("Epoch [1/10], Loss: 0.6\nEpoch [2/10], Loss: 0.5\nEpoch [2/10], Loss: 0.4\n")
    with pytest.raises(RunFileError, match=rf"{log}:3: epoch numbers not increasing"):
        tutorial_log.read_tutorial_log(log, skip_bad_lines=True)


def test_log_without_epochs(tmp_path):
    log = tmp_path / "empty.log"
    log.write_text("Training finished.\n")
    with pytest.raises(RunFileError, match="no epoch lines"):
        tutorial_log.read_tutorial_log(log)


def test_unreadable_log_is_named(tmp_path):
    folder_not_file = tmp_path / "dir.log"
    folder_not_file.mkdir()
    with pytest.raises(RunFileError, match=rf"{folder_not_file}: cannot read"):
        tutorial_log.read_tutorial_log(folder_not_file)
