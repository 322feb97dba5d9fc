"""fmnist/cluster/slurm_plugin.py: the executor plugin sees "CANCELLED by <uid>" as CANCELLED;
the profile's account and partition variables are checked before any job."""

from __future__ import annotations

import asyncio
import importlib
import sys

from fmnist.cluster import slurm_plugin
from helpers import copy_workflow, run_snakemake, workflow_env


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
