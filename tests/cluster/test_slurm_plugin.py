"""fmnist/cluster/slurm_plugin.py: the executor plugin sees "CANCELLED by <uid>" as CANCELLED;
the profile's account and partition variables are checked before any job; `--profile slurm`
as users type it finds the workflow's profile."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

from fmnist.cluster import slurm_plugin
from helpers import REPO_ROOT, copy_workflow, run_snakemake, workflow_env


def test_the_installed_plugin_compares_whole_states(monkeypatch):
    """The defect the workaround is for: the plugin keeps sacct's whole State field."""
    plugin = importlib.import_module(slurm_plugin.PLUGIN)
    monkeypatch.setattr(plugin, "query_job_status", plugin.query_job_status)
    printf = "printf '17|CANCELLED by 0\\n18|COMPLETED\\n'"
    states, _ = asyncio.run(plugin.query_job_status(f"bash -c {printf!r}", logger=None))
    assert states == {"17": "CANCELLED by 0", "18": "COMPLETED"}
    assert slurm_plugin.normalise_job_states()
    assert slurm_plugin.normalise_job_states()  # once: a second call wraps nothing again
    states, _ = asyncio.run(plugin.query_job_status(f"bash -c {printf!r}", logger=None))
    assert states == {"17": "CANCELLED", "18": "COMPLETED"}


def test_nothing_happens_where_the_plugin_is_not_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, slurm_plugin.PLUGIN, raising=False)
    assert slurm_plugin.normalise_job_states() is False


def test_an_unset_account_variable_is_named_before_any_job(tmp_path):
    """The profile's $FMNIST_SLURM_ACCOUNT reached sbatch literally when it was not set; now
    the plan stops first, naming what to export (nothing is submitted: no sbatch here)."""
    workdir = copy_workflow(tmp_path / "wf")
    env = workflow_env(FMNIST_SLURM_PARTITION="gpu")
    env.pop("FMNIST_SLURM_ACCOUNT", None)
    result = run_snakemake(workdir, "-n", "--profile", "profiles/slurm", env=env, limit=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        "the SLURM profile takes your account and partition from FMNIST_SLURM_ACCOUNT, "
        "which is not set: export FMNIST_SLURM_ACCOUNT=..."
    ) in output
    assert "FMNIST_SLURM_PARTITION" not in output.split("not set")[0].split("from")[-1]


def test_only_unset_variables_of_the_account_and_partition_count(monkeypatch):
    monkeypatch.setenv("SET_ONE", "x")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    raw = {"slurm_account": "${UNSET_ONE}", "slurm_partition": "$SET_ONE", "mem_mb": "$NOPE"}
    assert slurm_plugin.unset_identity_variables(raw) == ["UNSET_ONE"]
    assert slurm_plugin.unset_identity_variables({"slurm_account": "'proj'"}) == []


def own_profile(config_home: Path) -> Path:
    """A user's own profile named slurm, in their config folder, that would fail if used."""
    folder = config_home / "snakemake/slurm"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("executor: no-such-executor\n")
    return folder / "config.yaml"


def test_profile_slurm_as_typed_in_the_repository_is_the_workflows(tmp_path):
    """`snakemake --profile slurm` from the workflow's folder plans with profiles/slurm
    (through the committed link ./slurm), even beside a user's own profile of that name,
    which is neither used nor changed."""
    workdir = copy_workflow(tmp_path / "wf")
    theirs = own_profile(tmp_path / "config")
    env = workflow_env(
        FMNIST_SLURM_ACCOUNT="proj",
        FMNIST_SLURM_PARTITION="gpu",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    result = run_snakemake(workdir, "--profile", "slurm", "-n", env=env, limit=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train_model_parallel" in result.stdout
    assert theirs.read_text() == "executor: no-such-executor\n"
    # The link is in git (a fresh clone has it) and points into the repository.
    tracked = subprocess.run(
        ["git", "ls-files", "-s", "slurm"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout
    assert tracked.startswith("120000 "), tracked
    assert os.readlink(REPO_ROOT / "slurm") == "profiles/slurm"


def test_setup_names_a_users_own_slurm_profile(tmp_path):
    theirs = own_profile(tmp_path / "config")
    command = ["make", "-o", f"{sys.prefix}/.installed", "setup", f"VENV={sys.prefix}"]
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"not yours in {theirs.parent}" in result.stdout
    assert f"to use yours here: --profile {theirs.parent}" in result.stdout
    env["XDG_CONFIG_HOME"] = str(tmp_path / "nothing")
    quiet = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "note:" not in quiet.stdout
