"""provenance.csv: where and how each run was made, read from its run.json (format 2).

Facts that hold for the whole run come from the top of the record (setup, git); facts that
can change when a run is resumed elsewhere (host, software, scheduler) come from its
attempts: the last attempt's, since it finished the run, except the start time (the first
attempt's) and the SLURM job ids (every attempt's). The record was checked against
workflow/schemas/run.schema.yaml on reading, so every key the schema requires is there.
Imports no torch.
"""

from __future__ import annotations

import math

import pandas as pd

from fmnist.rundir.runfiles import Run

PROVENANCE_VERSIONS = ["python", "torch", "torchvision", "snakemake", "numpy", "cuda", "cudnn"]


def join_cell(value) -> str | float:
    """A provenance fact as a cell: lists joined by ",", null NaN, anything else str()."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return math.nan if value is None else str(value)


def record_facts(record: dict | None) -> dict:
    """The provenance runs.csv shows too (all NaN for a run without a record), and the
    last attempt's SLURM job ({} outside SLURM)."""
    if record is None:
        return {
            **dict.fromkeys(["stage_devices", "device_names", "git_commit"], math.nan),
            "slurm": {},
        }
    last = record["attempts"][-1]
    return {
        "stage_devices": join_cell(record["setup"]["devices"]),
        "device_names": join_cell(last["device_names"]),
        "git_commit": join_cell(record["git"]["commit"]),
        "slurm": last["slurm"] or {},
    }


def provenance_row(run: Run) -> dict:
    """Code, software, hardware, scheduler and data of one run folder."""
    record, facts = run.record, record_facts(run.record)
    attempts, setup = record["attempts"], record["setup"]
    last, slurm = attempts[-1], facts["slurm"]
    job_ids = [a["slurm"]["job_id"] for a in attempts if a["slurm"] is not None]
    row = {
        "run_id": run.run_id,
        "git_commit": facts["git_commit"],
        "git_dirty": join_cell(record["git"]["dirty"]),
        **{name: join_cell(last["versions"][name]) for name in PROVENANCE_VERSIONS},
        "stage_devices": facts["stage_devices"],
        "device_names": facts["device_names"],
        "train_step": join_cell(setup["train_step"]),  # a schedule: the distributed engine
        "processes": setup.get("world_size", 1),
        "threads": join_cell(setup["threads"]),
        # The distributed engine's processes may be on several hosts: each, in rank order.
        "hostname": join_cell(list(dict.fromkeys(r["hostname"] for r in last["ranks"])))
        if "ranks" in last
        else join_cell(last["hostname"]),
        "cuda_visible_devices": join_cell(last["cuda_visible_devices"]),
        "slurm_job_ids": " ".join(job_ids) if job_ids else math.nan,
        "slurm_partition": join_cell(slurm.get("partition")),
        "slurm_node": join_cell(slurm.get("node")),
        "attempts": len(attempts),
        "started": attempts[0]["started"],
        "finished": join_cell(last.get("finished")),
    }
    row.update({f"md5_{name}": md5 for name, md5 in sorted(setup["data_md5"].items())})
    return row


def provenance_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run folder (a tutorial log carries no provenance)."""
    return pd.DataFrame([provenance_row(r) for r in runs if r.record is not None])
