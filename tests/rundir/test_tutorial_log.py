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
    parsed = tutorial_log.parse_tutorial_log(log)
    assert parsed.columns["epoch"] == [1, 2, 3]
    assert parsed.columns["train_loss"] == [0.6, 0.5, 0.0]
    assert (parsed.total, parsed.skipped) == (10, [])


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
        "Epoch [1/3], Loss: 0.6\nEpoch [2/1\nEpoch [2/3], Loss: 0.5\n"
        "Epoch [x/3], Loss: abc\nEpoch [3/3], Loss: 0.4\nTraining finished.\n"
    )
    with pytest.raises(RunFileError, match=rf"{log}:2: malformed"):
        tutorial_log.parse_tutorial_log(log)
    parsed = tutorial_log.parse_tutorial_log(log, skip_bad_lines=True)
    assert parsed.skipped == [2, 4]
    assert parsed.columns["epoch"] == [1, 2, 3]
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


@pytest.mark.parametrize(
    ("epochs", "total", "missing"),
    [
        ([1], 10, "2..10"),
        ([1, 3], 3, "2"),
        ([1, 2, 4], 10, "3, 5..10"),
        ([2, 3, 4, 5, 6], 6, "1"),
    ],
)
def test_a_log_without_some_of_its_epochs_is_incomplete(tmp_path, epochs, total, missing):
    """Finished means every epoch 1..n of the [i/n] lines; the message says which are not."""
    log = tmp_path / "short.log"
    log.write_text("".join(f"Epoch [{e}/{total}], Loss: 0.5\n" for e in epochs))
    with pytest.raises(runfiles.IncompleteRunError) as caught:
        tutorial_log.read_tutorial_log(log)
    assert (
        str(caught.value)
        == f"{log}: tutorial log of a {total}-epoch run without epoch(s) {missing}"
    )


def test_a_skipped_line_leaves_its_epoch_missing(tmp_path):
    log = tmp_path / "garbled.log"
    log.write_text("Epoch [1/3], Loss: 0.6\nEpoch [2/3], Loss: x\nEpoch [3/3], Loss: 0.4\n")
    with pytest.raises(runfiles.IncompleteRunError, match="3-epoch run without epoch.s. 2$"):
        tutorial_log.read_tutorial_log(log, skip_bad_lines=True)


def test_lines_of_another_epoch_count_are_malformed(tmp_path):
    log = tmp_path / "two_runs.log"
    log.write_text(
        "Epoch [1/3], Loss: 0.6\nEpoch [2/5], Loss: 0.5\nEpoch [2/3], Loss: 0.5\n"
        "Epoch [3/3], Loss: 0.4\n"
    )
    with pytest.raises(
        RunFileError,
        match=rf"^{log}:2: malformed epoch line \(5 epochs, where the lines before say 3\)",
    ):
        tutorial_log.read_tutorial_log(log)
    run = tutorial_log.read_tutorial_log(log, skip_bad_lines=True)
    assert (run.epochs["epoch"], run.epochs["train_loss"], run.skipped_lines) == (
        [1, 2, 3],
        [0.6, 0.5, 0.4],
        [2],
    )


@pytest.mark.parametrize(
    ("loss", "why"),
    [
        ("nan", "'nan' is not a finite number"),
        ("NaN", "'NaN' is not a finite number"),
        ("inf", "'inf' is not a finite number"),
        ("-inf", "'-inf' is not a finite number"),
        ("-0.5", "-0.5 is less than the minimum of 0"),
    ],
)
@pytest.mark.parametrize("skip_bad_lines", [False, True])
def test_a_loss_the_schema_refuses_names_file_and_line(tmp_path, loss, why, skip_bad_lines):
    """A diverged run's NaN is no malformed line to skip: it is refused where it stands."""
    log = tmp_path / "diverged.log"
    log.write_text(
        f"Epoch [1/3], Loss: 0.6\nhello\nEpoch [2/3], Loss: 0.5\nEpoch [3/3], Loss: {loss}\n"
    )
    with pytest.raises(RunFileError) as caught:
        tutorial_log.read_tutorial_log(log, skip_bad_lines)
    assert str(caught.value) == f"{log}:4: loss: {why}"
    assert not isinstance(caught.value, runfiles.IncompleteRunError)
