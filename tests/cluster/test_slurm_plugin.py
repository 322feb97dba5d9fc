"""fmnist/cluster/slurm_plugin.py: the executor plugin sees "CANCELLED by <uid>" as CANCELLED."""

from __future__ import annotations

import asyncio
import importlib
import sys

from fmnist.cluster import slurm_plugin


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
