"""A workaround for a defect of snakemake-executor-plugin-slurm (2.8.0, the newest).

The plugin polls ``sacct -X --parsable2 --format=JobIdRaw,State`` and compares the State
field with its failure states ("CANCELLED", "FAILED", ...). For a job cancelled with
scancel, sacct prints "CANCELLED by <uid>", which matches none of them, so the plugin
takes the job for still running and Snakemake waits forever. Wrapping the plugin's
status query so that every state is its first word ends the wait at the next poll, with
the plugin's own failure message. Nothing changes where the plugin is not loaded.
"""

from __future__ import annotations

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
