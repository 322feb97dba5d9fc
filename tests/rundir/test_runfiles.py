"""fmnist/rundir/runfiles.py: run.json against its format, across the names a value has had."""

from __future__ import annotations

import pytest
from fmnist.rundir import runfiles
from helpers import DEFAULT_SETTINGS, make_record


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
