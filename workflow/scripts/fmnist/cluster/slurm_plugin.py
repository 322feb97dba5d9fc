"""What the workflow adds to snakemake-executor-plugin-slurm: a check of the profile's
account and partition before any job, and a workaround for a defect of the plugin (2.8.0,
the newest).

The plugin polls ``sacct -X --parsable2 --format=JobIdRaw,State`` and compares the State
field with its failure states ("CANCELLED", "FAILED", ...). For a job cancelled with
scancel, sacct prints "CANCELLED by <uid>", which matches none of them, so the plugin
takes the job for still running and Snakemake waits forever. Wrapping the plugin's
status query so that every state is its first word ends the wait at the next poll, with
the plugin's own failure message. Nothing changes where the plugin is not loaded.
"""

from __future__ import annotations

import os
import re
import sys

PLUGIN = "snakemake_executor_plugin_slurm"


def normalise_job_states() -> bool:
    """Patch the loaded plugin (once); False if Snakemake does not use it in this process."""
    plugin = sys.modules.get(PLUGIN)
    if plugin is None:
        return False
    original = plugin.query_job_status
    if getattr(original, "normalises_states", False):
        return True

    async def query_job_status(command: str, logger):
        states, seconds = await original(command, logger)
        if states is not None:
            states = {job: state.split(" by ", 1)[0] for job, state in states.items()}
        return states, seconds

    query_job_status.normalises_states = True
    plugin.query_job_status = query_job_status
    return True


IDENTITY = ("slurm_account", "slurm_partition")
"""The default resources the SLURM profile takes from the user's environment."""


def unset_identity_variables(raw_resources: dict[str, str]) -> list[str]:
    """The environment variables the profile's account and partition name that are not set
    (Snakemake would pass them to sbatch literally, e.g. '$FMNIST_SLURM_ACCOUNT')."""
    unset = []
    for name in IDENTITY:
        for variable in re.findall(r"\$\{?(\w+)", str(raw_resources.get(name) or "")):
            if not os.environ.get(variable) and variable not in unset:
                unset.append(variable)
    return unset


def identity_message(unset: list[str]) -> str:
    names = " and ".join(unset)
    example = " ".join(f"{v}=..." for v in unset)
    return (
        f"the SLURM profile takes your account and partition from {names}, which "
        f"{'is' if len(unset) == 1 else 'are'} not set: export {example} (your project's "
        "account and a partition with the nodes you want; `sacctmgr show assoc user=$USER` "
        "lists yours), then run again"
    )
