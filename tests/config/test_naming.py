"""fmnist/config/naming.py: one definition of a run id, applied wherever a run id enters
(the sweep, train.py, run.json, the report's pages; verify's source folders:
tests/verify/test_compare.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fmnist.config import naming
from fmnist.config.settings import SettingError
from fmnist.config.sweep import build_runs
from fmnist.report import pages
from fmnist.rundir import runfiles
from helpers import DEFAULT_SETTINGS, TRAIN_SCRIPT, run_script, write_run_folder

NOT_RUN_IDS = ["r$(touch PWNED2)", "x;touch PWNED;y", "../../../OVERWRITE", "..", ".", "a/b"]
NOT_RUN_IDS += ["-rf", "base\n", "a b", "", "ü"]


@pytest.mark.parametrize("name", NOT_RUN_IDS)
def test_paths_options_and_shell_syntax_are_not_run_ids(name):
    assert not naming.is_run_id(name)


def test_every_run_id_a_sweep_makes_is_one():
    sweep = {
        "lr": [0.01, 1e-4],
        "hidden_sizes": [[200], [512, 256]],
        "devices": [["cpu", "cpu"], "auto"],
        "tutorial_double_scaling": [True, False],
    }
    ids = list(build_runs(dict(DEFAULT_SETTINGS), sweep))
    assert "devices=cpu+cpu_hidden_sizes=512+256_lr=0.0001_tutorial_double_scaling=true" in ids
    assert all(naming.is_run_id(name) for name in ids) and len(ids) == 16


def test_the_sweep_refuses_an_id_that_is_not_one(monkeypatch):
    monkeypatch.setattr("fmnist.config.sweep.run_id", lambda values: "../x")
    with pytest.raises(SettingError, match=r"give the run id '\.\./x': not letters"):
        build_runs(dict(DEFAULT_SETTINGS), {"seed": [0]})


def test_run_json_with_a_path_for_a_run_id_is_refused(tmp_path):
    folder = write_run_folder(tmp_path, "base", [(1, 0.5, 0.5, 0.5, 1, 1)], DEFAULT_SETTINGS)
    record = json.loads((folder / "run.json").read_text())
    record["run_id"] = "../../../OVERWRITE"
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(runfiles.RunFileError, match=r"run.json: key run_id: '\.\./\.\./\.\./OVER"):
        runfiles.read_record(folder / "run.json")


def test_a_page_is_never_named_after_a_path():
    runs = pd.DataFrame({"run_id": ["../../../OVERWRITE"]})
    tables = {name: pd.DataFrame() for name in pages.TABLES} | {"runs": runs}
    with pytest.raises(ValueError, match=r"runs.csv: run_id '\.\./\.\./\.\./OVERWRITE' is not"):
        pages.render_pages(tables, synthetic=False)


def test_train_refuses_a_run_id_before_training(tmp_path):
    done = run_script(TRAIN_SCRIPT, "--data-dir", tmp_path, "--out-dir", tmp_path / "x;y")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "run id 'x;y' (--run-id, else --out-dir's name): not letters" in done.stderr
    assert not (tmp_path / "x;y").exists()
