"""`snakemake verify` end to end, on the CPU and offline: a run trained, then again from
scratch through the same training rule, compared byte for byte; then originals "from
somewhere else" (verify.source), unchanged and altered. The comparison itself:
tests/verify/test_compare.py."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_OVERLAY, SHARED_VERIFIED
from helpers import copy_workflow, run_snakemake, workflow_env

pytestmark = pytest.mark.workflow
RUN = SHARED_VERIFIED[0]


def output_of(result) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def verify(workdir: Path, *overlays: str) -> subprocess.CompletedProcess:
    return run_snakemake(
        workdir,
        "verify",
        "--profile",
        "profiles/local",
        "--cores",
        "2",
        "--configfile",
        "overlay.yaml",
        *overlays,
    )


def verdicts(workdir: Path) -> list[dict]:
    with (workdir / "results/verify/reproduction.csv").open() as handle:
        return list(csv.DictReader(handle))


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def verified(finished_workflow):
    """The shared workflow after `snakemake verify` (its runs SHARED_VERIFIED)."""
    return finished_workflow.ok(), finished_workflow.verify


def elsewhere(workdir: Path, name: str, change) -> str:
    """A copy of a verified run's folder "from a colleague", changed by ``change(folder)``,
    and an overlay pointing verify.source at it (its rerun is already made)."""
    source = workdir / name
    shutil.copytree(workdir / f"results/runs/{RUN}", source / RUN)
    change(source / RUN)
    overlay = workdir / f"{name}.yaml"
    overlay.write_text(yaml.safe_dump({"verify": {"source": name, "runs": [RUN]}}))
    return overlay.name


def test_verify_passes_for_unchanged_runs(verified):
    workdir, result = verified
    log = result.stderr
    for rule in ("verify_training", "compare_reproduction", "verify"):
        assert re.search(rf"(local)?rule {rule}:", log), rule
    rows = verdicts(workdir)
    assert [r["run"] for r in rows] == SHARED_VERIFIED
    for row in rows:
        assert (row["verdict"], row["identical"], row["passed"]) == (
            "reproduced (bit-identical)",
            "yes",
            "yes",
        )
        assert row["epochs_compared"] == "2" and row["original"] == f"results/runs/{row['run']}"
    assert f"Verification passed: 2 of 2 run(s) ({', '.join(SHARED_VERIFIED)})" in result.stdout
    assert (workdir / f"results/verify/{RUN}/model.pt").is_file()
    assert (workdir / f"results/benchmarks/verify_training/{RUN}.tsv").is_file()


def test_the_rerun_is_the_training_rules_own_command(finished_workflow):
    """The same options as the original's job, into results/verify/{run}."""
    commands = re.findall(
        r"python workflow/scripts/train.py (.*) > '?results/logs/(\S+)",
        finished_workflow.run.stderr + finished_workflow.verify.stderr,
    )
    (train,) = [c for c, where in commands if where.startswith(f"train_model_parallel/{RUN}.")]
    (rerun,) = [c for c, where in commands if where.startswith(f"verify_training/{RUN}.")]
    assert rerun == train.replace(f"results/runs/{RUN}", f"results/verify/{RUN}")


def test_a_second_verify_leaves_the_original_alone(workflow_copy):
    before = digest(workflow_copy / f"results/runs/{RUN}")
    again = verify(workflow_copy)
    assert again.returncode == 0, output_of(again)
    assert "rule verify_training" not in again.stderr  # up to date: nothing retrained
    assert digest(workflow_copy / f"results/runs/{RUN}") == before


def test_a_metric_one_ulp_off_is_not_reproduced(workflow_copy):
    workdir = workflow_copy

    def one_ulp(folder):
        rows = list(csv.reader((folder / "epochs.csv").open()))
        column = rows[0].index("test_loss")
        rows[2][column] = repr(math.nextafter(float(rows[2][column]), math.inf))
        with (folder / "epochs.csv").open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)

    result = verify(workdir, elsewhere(workdir, "ulp", one_ulp))
    assert result.returncode != 0, output_of(result)
    assert "rule verify_training" not in result.stderr  # the rerun does not depend on it
    assert f"1 run(s) not confirmed: {RUN}" in result.stderr
    (row,) = verdicts(workdir)
    assert (row["verdict"], row["passed"], row["differing"]) == (
        "not reproduced",
        "no",
        "test_loss",
    )
    assert row["original"] == f"ulp/{RUN}"
    assert 0 < float(row["test_loss_max_abs_diff"]) < 1e-13  # one ulp of a loss near 10


def test_altered_weights_are_not_reproduced(workflow_copy):
    workdir = workflow_copy

    def nudge(folder):
        state = torch.load(folder / "model.pt", weights_only=True)
        name = sorted(state)[0]
        state[name].view(-1)[0] = torch.nextafter(state[name].view(-1)[0], torch.tensor(1e9))
        torch.save(state, folder / "model.pt")

    result = verify(workdir, elsewhere(workdir, "weights", nudge))
    assert result.returncode != 0, output_of(result)
    (row,) = verdicts(workdir)
    assert row["verdict"] == "not reproduced" and row["train_loss_max_abs_diff"] == "0.0"
    assert float(row["weights_max_abs_diff"]) > 0


def test_the_rerun_asks_for_the_original_s_thread_count(workflow_copy):
    """A colleague's run trained with 2 threads per process is retrained with 2 here (the
    thread count shapes how CPU matmuls sum), whatever cpus_per_task says."""
    workdir = workflow_copy

    def two_threads(folder):
        record = json.loads((folder / "run.json").read_text())
        record["setup"]["threads"] = 2
        (folder / "run.json").write_text(json.dumps(record, indent=2))

    overlay = elsewhere(workdir, "threads", two_threads)
    result = verify(workdir, overlay, "-n", "-p", "--forcerun", "verify_training")
    assert result.returncode == 0, output_of(result)
    commands = [line for line in result.stdout.splitlines() if "--out-dir results/verify/" in line]
    assert commands and all(" --threads 2 " in command for command in commands), commands


def test_a_changed_thread_count_within_rounding_is_reproduced_within_tolerance(workflow_copy):
    """The rerun could not have the original's 2 threads (--cores 1): its 1 thread is a
    difference of rounding, excused within the bound."""
    workdir = workflow_copy

    def other_threads(folder):
        record = json.loads((folder / "run.json").read_text())
        record["setup"]["threads"] = 2
        (folder / "run.json").write_text(json.dumps(record, indent=2))
        rows = (folder / "epochs.csv").read_text().splitlines()
        cells = rows[1].split(",")
        cells[1] = repr(math.nextafter(float(cells[1]), 0.0))
        rows[1] = ",".join(cells)
        (folder / "epochs.csv").write_text("\n".join(rows) + "\n")

    result = verify(workdir, elsewhere(workdir, "threads", other_threads), "--cores", "1")
    assert result.returncode == 0, output_of(result)
    (row,) = verdicts(workdir)
    assert (row["verdict"], row["passed"]) == (
        "reproduced within tolerance (threads differ)",
        "yes",
    )
    assert row["provenance_differences"] == "threads: 2 → 1"


def test_under_the_slurm_profile_the_rerun_is_a_slurm_job_like_any_other(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    overlay = {"data": SHARED_OVERLAY["data"], "train": SHARED_OVERLAY["train"]}
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    result = run_snakemake(
        workdir,
        *("verify", "-n", "--profile", "profiles/slurm", "--configfile", "overlay.yaml"),
        limit=300,
        env=workflow_env(FMNIST_SLURM_ACCOUNT="acct", FMNIST_SLURM_PARTITION="gpu"),
    )
    assert result.returncode == 0, output_of(result)
    resources = dict(re.findall(r"\nrule (\w+):.*?\n\s+resources: ([^\n]*)", result.stdout, re.S))
    assert resources["verify_training"] == resources["train_model_parallel"]
    assert (
        "gpu=2" in resources["verify_training"]
        and "slurm_account=acct" in resources["verify_training"]
    )


def test_results_of_another_config_are_neither_reported_nor_verified(workflow_copy):
    """After the shared sweep (--configfile overlay.yaml), the defaults' report and verify
    refuse, naming the --configfile to repeat, before any job; repeated, the report builds."""
    for args in (["--report", "results/other.html"], ["verify", "--cores", "2"]):
        refused = run_snakemake(workflow_copy, *args)
        assert refused.returncode == 1, output_of(refused)
        assert "Traceback" not in refused.stderr
        assert "results/ holds the results of another configuration" in refused.stderr
        assert "repeat `--configfile overlay.yaml`" in refused.stderr
        assert "rule " not in refused.stderr  # no job started
    assert not (workflow_copy / "results/other.html").exists()


def test_a_run_folder_named_like_a_command_is_refused_before_any_job(workflow_copy):
    workdir = workflow_copy
    source = workdir / "c/runs"
    shutil.copytree(workdir / f"results/runs/{RUN}", source / "r$(touch PWNED2)")
    (workdir / "atk.yaml").write_text(
        yaml.safe_dump({"verify": {"source": "c/runs", "runs": "all"}})
    )
    result = verify(workdir, "atk.yaml")
    assert result.returncode == 1, output_of(result)
    assert "run folder 'r$(touch PWNED2)' is not a run id" in result.stderr
    assert "Traceback" not in result.stderr and "rule " not in result.stderr
    assert not (workdir / "PWNED2").exists()
