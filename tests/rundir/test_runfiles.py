"""fmnist/rundir/runfiles.py: run.json against its format, across the names a value has had."""

from __future__ import annotations

import pytest
from fmnist.rundir import runfiles
from helpers import DEFAULT_SETTINGS, RUN_HEADER, make_record, three_epochs, write_run


def test_run_json_of_before_the_renames_still_reads():
    """Runs made before 2026-12-02 call the stop margin deadline_margin_seconds and the
    hand-written step TrainStep; their run folders stay valid."""
    record = make_record("old", DEFAULT_SETTINGS)
    setup = record["setup"]
    setup["deadline_margin_seconds"] = setup.pop("signal_seconds")
    setup["train_step"] = "TrainStep"
    runfiles.check_record(record, "old/run.json")
    del setup["deadline_margin_seconds"]
    with pytest.raises(runfiles.RunFileError, match="old/run.json: key setup"):
        runfiles.check_record(record, "old/run.json")


# --------------------------------------------------------------------------- epochs.csv


def write_epochs(tmp_path, rows, header=RUN_HEADER):
    """A run folder whose epochs.csv holds ``rows`` (cells as written) under ``header``."""
    return write_run(tmp_path, "r", rows, header) / runfiles.EPOCHS_FILE


def with_cell(rows, epoch: int, column: str, text: str) -> list[tuple]:
    """``rows`` with the cell of (epoch, column) replaced by ``text``."""
    at = RUN_HEADER.split(",").index(column)
    rows = [list(r) for r in rows]
    rows[epoch - 1][at] = text
    return [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("epoch", "column", "text", "why"),
    [
        (3, "test_accuracy", "5.0", "5.0 is greater than the maximum of 1"),
        (3, "test_accuracy", "-0.5", "-0.5 is less than the minimum of 0"),
        (1, "test_accuracy", "inf", "'inf' is not a finite number"),
        (2, "train_loss", "nan", "'nan' is not a finite number"),
        (3, "test_loss", "", "'' is not a finite number"),
        (3, "test_loss", "-1e-3", "-0.001 is less than the minimum of 0"),
        (2, "train_loss", "-0.1", "-0.1 is less than the minimum of 0"),
        (2, "test_accuracy", "oops", "'oops' is not a finite number"),
        (1, "epoch_seconds", "-2.0", "-2.0 is less than the minimum of 0"),
        (1, "samples_per_second", "-inf", "'-inf' is not a finite number"),
        (2, "epoch", "2.0", "'2.0' is not an integer"),
        (1, "epoch", "0", "0 is less than the minimum of 1"),
    ],
)
def test_a_cell_the_schema_refuses_names_file_line_and_column(tmp_path, epoch, column, text, why):
    path = write_epochs(tmp_path, with_cell(three_epochs(0.8), epoch, column, text))
    with pytest.raises(runfiles.RunFileError) as caught:
        runfiles.read_epochs(path)
    assert str(caught.value) == f"{path}:{epoch + 1}: column {column}: {why}"


def test_peak_memory_is_a_column_with_bounds_too(tmp_path):
    header = RUN_HEADER + ",peak_memory_mb_cuda0,peak_memory_mb_stage1"
    rows = [(*r, 512.0, 256.0) for r in three_epochs(0.8)]
    path = write_epochs(tmp_path, rows, header)
    columns = runfiles.read_epochs(path)
    assert columns["peak_memory_mb_cuda0"] == [512.0] * 3
    assert list(columns)[:6] == runfiles.EPOCH_COLUMNS
    path.write_text(path.read_text().replace(",256.0\n", ",-256.0\n", 1))
    with pytest.raises(runfiles.RunFileError, match=rf"^{path}:2: column peak_memory_mb_stage1: "):
        runfiles.read_epochs(path)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (RUN_HEADER + ",note", "unknown column(s) 'note'"),
        (RUN_HEADER + ",peak_memory_mb_gpu0", "unknown column(s) 'peak_memory_mb_gpu0'"),
        (
            RUN_HEADER.replace("test_loss", "val_loss"),
            "missing column(s) 'test_loss'; unknown column(s) 'val_loss'",
        ),
        (RUN_HEADER + ",train_loss", "repeated column(s) 'train_loss'"),
    ],
)
def test_a_header_off_the_format_is_named(tmp_path, header, why):
    width = len(header.split(","))
    rows = [(*r, *[1.0] * (width - 6)) for r in three_epochs(0.8)]
    path = write_epochs(tmp_path, rows, header)
    with pytest.raises(runfiles.RunFileError) as caught:
        runfiles.read_epochs(path)
    assert str(caught.value).startswith(f"{path}:1: {why} (the columns are those of ")


@pytest.mark.parametrize(
    ("order", "line", "why"),
    [
        ([1, 3, 2], 3, "3 where epoch 2 belongs"),
        ([2, 3], 2, "2 where epoch 1 belongs"),
        ([1, 1, 2], 3, "1 where epoch 2 belongs"),
    ],
)
def test_rows_are_epochs_1_to_n_in_order(tmp_path, order, line, why):
    rows = [(e, *three_epochs(0.8)[e - 1][1:]) for e in order]
    path = write_epochs(tmp_path, rows)
    with pytest.raises(runfiles.RunFileError) as caught:
        runfiles.read_epochs(path)
    assert str(caught.value) == (
        f"{path}:{line}: column epoch: {why} (one row per epoch, from 1, in order)"
    )


def test_a_row_the_format_allows_reads_back_exactly(tmp_path):
    rows = with_cell(three_epochs(0.8), 3, "test_accuracy", "1.0")
    rows = with_cell(rows, 1, "train_loss", "0.0")
    columns = runfiles.read_epochs(write_epochs(tmp_path, rows))
    assert columns["epoch"] == [1, 2, 3]
    assert columns["test_accuracy"] == [0.8 - 0.10, 0.8 - 0.05, 1.0]
    assert columns["train_loss"] == [0.0, 0.5, 0.3]


# --------------------------------------------------------------------------- run folders


def test_more_epochs_than_promised_is_no_incomplete_run(tmp_path):
    rows = [*three_epochs(0.8), (4, 0.2, 0.3, 0.81, 4.0, 1200.0)]
    folder = write_run(tmp_path, "r", rows)
    with pytest.raises(runfiles.RunFileError, match="holds epochs 1..4, but run.json promises"):
        runfiles.read_run_dir(folder)
    with pytest.raises(runfiles.RunFileError) as caught:
        runfiles.read_run_dir(folder)
    assert not isinstance(caught.value, runfiles.IncompleteRunError)


@pytest.mark.parametrize(
    "held",
    [
        [runfiles.LOCK_FILE],
        [runfiles.LOCK_FILE, runfiles.EPOCHS_FILE],
        [runfiles.EPOCHS_FILE, runfiles.CHECKPOINT_FILE, runfiles.LOCK_FILE],
    ],
)
def test_a_folder_still_training_is_incomplete(tmp_path, held):
    """No run.json yet, but what training writes first: in progress (or stopped), not
    broken, so that --skip-incomplete can leave it out."""
    folder = tmp_path / "runs" / "lr=0.1_seed=0"
    folder.mkdir(parents=True)
    for name in held:
        (folder / name).write_text(
            "epoch,train_loss\n1,0.5" if name == runfiles.EPOCHS_FILE else ""
        )
    with pytest.raises(runfiles.IncompleteRunError) as caught:
        runfiles.read_run_dir(folder)
    in_order = [n for n in runfiles.IN_PROGRESS_FILES if n in held]
    assert str(caught.value) == (
        f"{folder / 'run.json'}: missing: run folder {folder} has not finished training "
        f"(still training, stopped or failed: it holds {', '.join(in_order)})"
    )


def test_a_folder_without_any_run_file_is_no_run(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a run")
    with pytest.raises(runfiles.RunFileError) as caught:
        runfiles.read_run_dir(folder)
    assert not isinstance(caught.value, runfiles.IncompleteRunError)
    assert str(caught.value).startswith(f"{folder / 'epochs.csv'}: missing")
