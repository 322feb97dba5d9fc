"""Nothing partial is taken for done, at the workflow level (local profile, real processes).

Reproduces the report: a run is started, `snakemake --unlock` is run from another shell and
the same workflow is started again while the first still trains. The second start must not
write into the same run folder; whatever each ends with, the run folder then holds either the
finished run (each epoch once, under its header) or no finished outputs at all.
"""

from __future__ import annotations

import csv
import subprocess
import time

import pytest
import yaml
from helpers import copy_workflow, snakemake_command, workflow_env

pytestmark = [pytest.mark.timeout(900), pytest.mark.workflow]

OVERLAY = {
    "data": {"dir": "resources/synthetic", "synthetic": {"train_size": 2000, "test_size": 500}},
    # About 0.15 s an epoch: 60 epochs leave time to start a second run beside the first.
    "train": {"epochs": 60, "batch_size": 10, "devices": ["cpu", "cpu"]},
    "resources": {"train_model_parallel": {"cpus_per_task": 1}},
}


def snakemake(workdir, *args, **popen):
    command = snakemake_command("--profile", "profiles/local", *args)
    return subprocess.Popen(
        [*command, "--configfile", "overlay.yaml"],
        cwd=workdir,
        env=workflow_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def test_a_second_workflow_run_never_interleaves_epochs(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    epochs_csv = workdir / "results/runs/base/epochs.csv"
    first = snakemake(workdir)
    deadline = time.monotonic() + 300
    while not (epochs_csv.exists() and epochs_csv.read_text().count("\n") >= 3):
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first run wrote no epochs"
        time.sleep(0.05)
    unlock = subprocess.run(
        ["snakemake", "--unlock", "--configfile", "overlay.yaml"],
        cwd=workdir,
        env=workflow_env(),
        capture_output=True,
        text=True,
    )
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    second_output, _ = snakemake(workdir).communicate(timeout=600)
    first_output, _ = first.communicate(timeout=600)
    assert "is being written by process" in second_output + first_output
    # However each ended, no finished run holds an epoch twice or lacks its header.
    if (workdir / "results/runs/base/run.json").exists():
        with epochs_csv.open() as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["epoch"]) for r in rows] == list(range(1, 61))
    # and the next start finishes the run (resuming from its checkpoint), each epoch once.
    final, _ = snakemake(workdir).communicate(timeout=600)
    assert "Nothing to be done" in final or "steps (100%) done" in final, final
    with epochs_csv.open() as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == list(range(1, 61))
