"""Tests of fmnist.report.gathering: reading the inputs, and writing all tables or none."""

from __future__ import annotations

import json
import os

import pytest
from fmnist.report import gathering
from fmnist.rundir import files
from fmnist.rundir.runfiles import LOCK_FILE, IncompleteRunError, RunFileError
from helpers import RUN_HEADER, three_epochs, write_run, write_three_seeds, write_tutorial_log


def test_outputs(tmp_path):
    out = tmp_path / "out"
    paths = [*write_three_seeds(tmp_path), write_tutorial_log(tmp_path / "t.log")]
    gathering.gather_runs(paths, out)
    assert sorted(os.listdir(out)) == sorted(gathering.OUTPUT_FILES)


def test_no_output_folder_writes_nothing(tmp_path):
    result = gathering.gather_runs(write_three_seeds(tmp_path), None)
    assert len(result.runs) == 3
    assert sorted(os.listdir(tmp_path)) == ["runs"]


def test_epochs_not_1_to_n(tmp_path):
    rows = three_epochs(0.8)
    folder = write_run(tmp_path, "r", [rows[0], rows[2], rows[1]])
    with pytest.raises(RunFileError, match=r"epochs\.csv:3: column epoch: 3 where epoch 2 belongs"):
        gathering.gather_runs([folder], None)
    (folder / "epochs.csv").write_text(RUN_HEADER + "\n1.5,0.5,0.6,0.7,1,1\n")
    with pytest.raises(RunFileError, match=r"epochs\.csv:2: column epoch: '1.5' is not an integer"):
        gathering.gather_runs([folder], None)


def test_malformed_log_writes_nothing(tmp_path):
    log = write_tutorial_log(tmp_path / "bad.log", "Epoch [1/10], Loss: 0.6\nEpoch [2/1\n")
    with pytest.raises(RunFileError, match=rf"{log}:2: malformed"):
        gathering.gather_runs([log], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_skipped_lines_are_reported(tmp_path, capsys):
    log = write_tutorial_log(
        tmp_path / "bad.log", "Epoch [1/2], Loss: 0.6\nEpoch [2/1\nEpoch [2/2], Loss: 0.5\n"
    )
    gathering.gather_runs([log], None, skip_bad_lines=True)
    err = capsys.readouterr().err
    assert f"skipped 1 malformed line(s) in {log} (line 2)" in err
    assert "skipped 1 malformed line(s) in total" in err


# --------------------------------------------------------------------------- broken run folders


@pytest.mark.parametrize("missing", ["epochs.csv", "run.json"])
def test_missing_file_is_named(tmp_path, missing):
    folder = write_run(tmp_path / "runs", "r", three_epochs(0.8))
    (folder / missing).unlink()
    with pytest.raises(RunFileError, match=rf"{folder / missing}: missing"):
        gathering.gather_runs([folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _break(record: dict, how: str) -> dict:
    if how == "no setup":
        del record["setup"]
    elif how == "params not an object":
        record["params"] = "lr=0.001"
    elif how == "old format":
        record["format"] = 1
    elif how == "empty":
        record = {}
    return record


@pytest.mark.parametrize(
    ("how", "key"),
    [
        ("no setup", r"key \(top level\): 'setup' is a required property"),
        ("params not an object", r"key params: 'lr=0.001' is not of type 'object'"),
        ("old format", r"format 1, written by another version of this workflow \(this one"),
        ("empty", r"key \(top level\): '\w+' is a required property"),
    ],
)
def test_run_json_breaking_the_schema_names_file_and_key(tmp_path, how, key):
    folder = write_run(tmp_path, "r", three_epochs(0.8))
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(_break(record, how)))
    with pytest.raises(RunFileError, match=rf"^{folder / 'run.json'}: {key}"):
        gathering.gather_runs([folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nonexistent_path(tmp_path):
    with pytest.raises(RunFileError, match="no such run folder"):
        gathering.gather_runs([tmp_path / "nope"], None)


def test_no_paths():
    with pytest.raises(RunFileError, match="no runs given"):
        gathering.gather_runs([], None)


def test_truncated_or_bad_csv(tmp_path):
    folder = write_run(tmp_path, "r", three_epochs(0.8))
    text = (folder / "epochs.csv").read_text()
    (folder / "epochs.csv").write_text(text.rstrip("\n")[:-12])
    with pytest.raises(RunFileError, match=r"epochs\.csv:4: expected 6 values"):
        gathering.gather_runs([folder], None)
    (folder / "epochs.csv").write_text(RUN_HEADER + "\n1,0.5,0.6,oops,1,1\n")
    with pytest.raises(RunFileError, match=r"epochs\.csv:2: column test_accuracy: 'oops' is not"):
        gathering.gather_runs([folder], None)
    (folder / "epochs.csv").write_text(RUN_HEADER + "\n")
    with pytest.raises(RunFileError, match="no epochs"):
        gathering.gather_runs([folder], None)


def test_duplicate_run_id(tmp_path):
    a = write_run(tmp_path / "a", "same", three_epochs(0.8))
    b = write_run(tmp_path / "b", "same", three_epochs(0.8))
    with pytest.raises(RunFileError, match="duplicate run id"):
        gathering.gather_runs([a, b], None)


def test_error_keeps_previous_outputs(tmp_path):
    three_seeds = write_three_seeds(tmp_path)
    out = tmp_path / "out"
    gathering.gather_runs(three_seeds, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (three_seeds[1] / "run.json").unlink()
    with pytest.raises(RunFileError):
        gathering.gather_runs(three_seeds, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_atomic_write_failure_leaves_old_file(tmp_path):
    """gathering writes through files.atomic_write: a failing write keeps the old file."""
    target = tmp_path / "t.csv"
    target.write_text("old\n")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(target, fail)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["t.csv"]


def test_an_incomplete_run_is_an_error_naming_it(tmp_path):
    runs = write_three_seeds(tmp_path)
    bad = write_run(tmp_path / "runs", "lr=0.001_seed=9", three_epochs(0.8)[:2], seed=9)
    with pytest.raises(IncompleteRunError) as caught:
        gathering.gather_runs([*runs, bad], tmp_path / "out")
    assert str(caught.value) == (
        f"run lr=0.001_seed=9 ({bad / 'epochs.csv'}) holds epochs 1..2, but run.json "
        "promises epochs 1..3"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("final_row", "why"),
    [
        ((3, 0.3, "", 0.8, 4.0, 1200.0), "column test_loss: '' is not a finite number"),
        ((3, "nan", 0.4, 0.8, 4.0, 1200.0), "column train_loss: 'nan' is not a finite number"),
        (
            (3, 0.3, 0.4, 5.0, 4.0, 1200.0),
            "column test_accuracy: 5.0 is greater than the maximum of 1",
        ),
    ],
    ids=["empty-final-cell", "nan-final-row", "accuracy-5"],
)
def test_a_broken_final_row_is_no_incomplete_run_to_skip(tmp_path, final_row, why):
    """Training writes every cell, finite and in range: a row that is not is broken, and
    --skip-incomplete does not hide it."""
    runs = write_three_seeds(tmp_path)
    bad = write_run(tmp_path / "runs", "r9", [*three_epochs(0.8)[:2], final_row], seed=9)
    with pytest.raises(RunFileError) as caught:
        gathering.gather_runs([*runs, bad], tmp_path / "out", skip_incomplete=True)
    assert str(caught.value) == f"{bad / 'epochs.csv'}:4: {why}"
    assert not isinstance(caught.value, IncompleteRunError)
    assert not (tmp_path / "out").exists()


def test_skip_incomplete_leaves_runs_out_and_says_so(tmp_path, capsys):
    runs = write_three_seeds(tmp_path)
    bad = write_run(tmp_path / "runs", "lr=0.001_seed=9", three_epochs(0.9)[:1], seed=9)
    tables = gathering.gather_runs([*runs, bad], tmp_path / "out", skip_incomplete=True)
    assert list(tables.runs["run_id"]) == [f"lr=0.001_seed={s}" for s in range(3)]
    assert list(tables.summary["n_seeds"]) == [3]
    assert "gather: left out an incomplete run: run lr=0.001_seed=9" in capsys.readouterr().err
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "Left out: 1 incomplete run(s) (run lr=0.001_seed=9 (" in markdown
    assert "% Left out: 1 incomplete run(s)" in (tmp_path / "out" / "summary.tex").read_text()


def test_out_naming_a_file_is_an_error(tmp_path):
    runs = write_three_seeds(tmp_path)
    target = tmp_path / "tables"
    target.write_text("not a folder")
    with pytest.raises(RunFileError, match=rf"--out {target}: not a folder"):
        gathering.gather_runs(runs, target)
    assert target.read_text() == "not a folder"


def test_skip_incomplete_leaves_out_a_folder_still_training(tmp_path, capsys):
    """results/runs/* while a run trains: its folder has epochs.csv and the lock, no run.json."""
    write_three_seeds(tmp_path)
    training = write_run(tmp_path / "runs", "lr=0.001_seed=9", three_epochs(0.9)[:1], seed=9)
    (training / "run.json").unlink()
    (training / LOCK_FILE).write_text("pid 123 on node1\n")
    paths = sorted((tmp_path / "runs").iterdir())
    with pytest.raises(IncompleteRunError, match=rf"^{training / 'run.json'}: missing: "):
        gathering.gather_runs(paths, tmp_path / "out")
    tables = gathering.gather_runs(paths, tmp_path / "out", skip_incomplete=True)
    assert list(tables.runs["run_id"]) == [f"lr=0.001_seed={s}" for s in range(3)]
    assert (
        f"gather: left out an incomplete run: {training / 'run.json'}: missing: run folder "
        f"{training} has not finished training (still training, stopped or failed: it holds "
        f"epochs.csv, {LOCK_FILE})\n"
    ) in capsys.readouterr().err
    assert "Left out: 1 incomplete run(s)" in (tmp_path / "out" / "summary.md").read_text()


def test_skip_incomplete_leaves_out_a_tutorial_log_short_of_epochs(tmp_path, capsys):
    short = write_tutorial_log(tmp_path / "short.log", "Epoch [1/10], Loss: 0.6\n")
    whole = write_tutorial_log(tmp_path / "whole.log")
    with pytest.raises(IncompleteRunError, match="10-epoch run without epoch.s. 2..10$"):
        gathering.gather_runs([whole, short], None)
    tables = gathering.gather_runs([whole, short], None, skip_incomplete=True)
    assert list(tables.runs["run_id"]) == ["whole"]
    assert f"left out an incomplete run: {short}: tutorial log of a 10-epoch" in (
        capsys.readouterr().err
    )
