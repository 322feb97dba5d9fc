"""Compute accounting (fmnist/cluster/sacct.py, fmnist/report/compute.py,
fmnist/report/statement.py) against
sacct output recorded on the real test SLURM (tests/slurm/start_cluster.sh, slurm-wlm
22.05.8, two GPUs declared as generic resources), with the run.json attempts those very
jobs wrote: job 32 (test_training_job_gets_two_gpus_and_correct_outputs, one attempt) and
job 35 (test_time_limit_checkpoints_and_resumes_to_identical_metrics: a 2-minute limit,
stopped before it three times, requeued itself and finished in its fourth allocation).
Recorded on 2026-12-01 with

    SLURM_CONF=/var/tmp/mp-slurm-test-v2/etc/slurm.conf sacct [-D] --parsable2 -j 32,35 -o ...

The cluster prints its times in UTC (the machine's zone), hence tz=UTC below.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from fmnist.cluster import sacct
from fmnist.report import compute, statement
from fmnist.report.gathering import gather_runs, load_run
from fmnist.report.tables import build_tables
from helpers import BASE_PARAMS, SCRIPTS_DIR, write_run_folder

UTC = dt.UTC

BRIEF_FORMAT_D = """\
JobIDRaw|State|Elapsed|AllocTRES|MaxRSS|ConsumedEnergy|Submit|Start|End
32|COMPLETED|00:00:06|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02
32.batch|COMPLETED|00:00:06|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02
32.0|COMPLETED|00:00:04|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:57|2026-12-01T20:26:57|2026-12-01T20:27:01
35|REQUEUED|00:00:30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:27:36|2026-12-01T20:27:36|2026-12-01T20:28:06
35.batch|CANCELLED|00:00:30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:27:36|2026-12-01T20:27:36|2026-12-01T20:28:06
35.0|FAILED|00:00:29|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:27:37|2026-12-01T20:27:37|2026-12-01T20:28:06
35|REQUEUED|00:00:30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:28:06|2026-12-01T20:30:07|2026-12-01T20:30:37
35.batch|CANCELLED|00:00:30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:30:07|2026-12-01T20:30:07|2026-12-01T20:30:37
35.0|FAILED|00:00:30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:30:07|2026-12-01T20:30:07|2026-12-01T20:30:37
35|REQUEUED|00:00:30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:30:37|2026-12-01T20:32:39|2026-12-01T20:33:09
35.batch|CANCELLED|00:00:30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:32:39|2026-12-01T20:32:39|2026-12-01T20:33:09
35.0|FAILED|00:00:29|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:32:40|2026-12-01T20:32:40|2026-12-01T20:33:09
35|COMPLETED|00:00:21|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:33:09|2026-12-01T20:35:11|2026-12-01T20:35:32
35.batch|COMPLETED|00:00:21|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:11|2026-12-01T20:35:11|2026-12-01T20:35:32
35.0|COMPLETED|00:00:19|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:12|2026-12-01T20:35:12|2026-12-01T20:35:31
"""
"""`sacct -a -D --parsable2 -o JobIDRaw,State,Elapsed,AllocTRES,MaxRSS,ConsumedEnergy,
Submit,Start,End -j 32,35`: every allocation of each job, each followed by its steps."""

FULL_D = """\
JobIDRaw|State|Elapsed|ElapsedRaw|AllocTRES|MaxRSS|ConsumedEnergyRaw|Submit|Start|End|NodeList
32|COMPLETED|00:00:06|6|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02|localhost
32.batch|COMPLETED|00:00:06|6|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02|localhost
32.0|COMPLETED|00:00:04|4|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:57|2026-12-01T20:26:57|2026-12-01T20:27:01|localhost
35|REQUEUED|00:00:30|30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:27:36|2026-12-01T20:27:36|2026-12-01T20:28:06|localhost
35.batch|CANCELLED|00:00:30|30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:27:36|2026-12-01T20:27:36|2026-12-01T20:28:06|localhost
35.0|FAILED|00:00:29|29|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:27:37|2026-12-01T20:27:37|2026-12-01T20:28:06|localhost
35|REQUEUED|00:00:30|30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:28:06|2026-12-01T20:30:07|2026-12-01T20:30:37|localhost
35.batch|CANCELLED|00:00:30|30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:30:07|2026-12-01T20:30:07|2026-12-01T20:30:37|localhost
35.0|FAILED|00:00:30|30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:30:07|2026-12-01T20:30:07|2026-12-01T20:30:37|localhost
35|REQUEUED|00:00:30|30|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:30:37|2026-12-01T20:32:39|2026-12-01T20:33:09|localhost
35.batch|CANCELLED|00:00:30|30|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:32:39|2026-12-01T20:32:39|2026-12-01T20:33:09|localhost
35.0|FAILED|00:00:29|29|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:32:40|2026-12-01T20:32:40|2026-12-01T20:33:09|localhost
35|COMPLETED|00:00:21|21|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:33:09|2026-12-01T20:35:11|2026-12-01T20:35:32|localhost
35.batch|COMPLETED|00:00:21|21|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:11|2026-12-01T20:35:11|2026-12-01T20:35:32|localhost
35.0|COMPLETED|00:00:19|19|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:12|2026-12-01T20:35:12|2026-12-01T20:35:31|localhost
"""
"""The same with the fields fmnist.cluster.sacct.FIELDS asks for (what gather.py runs)."""

FULL_PLAIN = """\
JobIDRaw|State|Elapsed|ElapsedRaw|AllocTRES|MaxRSS|ConsumedEnergyRaw|Submit|Start|End|NodeList
32|COMPLETED|00:00:06|6|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02|localhost
32.batch|COMPLETED|00:00:06|6|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:56|2026-12-01T20:26:56|2026-12-01T20:27:02|localhost
32.0|COMPLETED|00:00:04|4|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:26:57|2026-12-01T20:26:57|2026-12-01T20:27:01|localhost
35|COMPLETED|00:00:21|21|billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1|||2026-12-01T20:33:09|2026-12-01T20:35:11|2026-12-01T20:35:32|localhost
35.batch|COMPLETED|00:00:21|21|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:11|2026-12-01T20:35:11|2026-12-01T20:35:32|localhost
35.0|COMPLETED|00:00:19|19|cpu=1,gres/gpu=2,mem=1500M,node=1||0|2026-12-01T20:35:12|2026-12-01T20:35:12|2026-12-01T20:35:31|localhost
"""
"""Without -D: only the last allocation of the requeued job 35 (21 s of its 111 s)."""

VERSIONS = {
    "python": "3.11.7",
    "torch": "2.14.1+cu130",
    "torchvision": "0.29.1",
    "snakemake": "9.27.1",
    "numpy": "2.4.6",
    "cuda": "13.0",
    "cudnn": 92400,
}
SLURM_35 = {"job_id": "35", "partition": "debug", "node": "localhost", "account": None}
DEADLINE = "the SLURM time limit is near"
JOB_35_ATTEMPTS = [
    {"started": "2026-12-01T20:27:40+00:00", "finished": "2026-12-01T20:28:06+00:00"},
    {"started": "2026-12-01T20:30:10+00:00", "finished": "2026-12-01T20:30:37+00:00"},
    {"started": "2026-12-01T20:32:43+00:00", "finished": "2026-12-01T20:33:09+00:00"},
    {"started": "2026-12-01T20:35:15+00:00", "finished": "2026-12-01T20:35:30+00:00"},
]
"""run.json's attempts of job 35 (start and end as the training script recorded them)."""
ROWS = [(1, 1.2, 1.1, 0.6, 4.0, 500.0), (2, 0.9, 0.8, 0.7, 4.0, 500.0)]


def job_35_attempts(which=range(4)) -> list[dict]:
    attempts = []
    for i in which:
        attempt = {
            **JOB_35_ATTEMPTS[i],
            "start_epoch": 1 + i,
            "hostname": "vm",
            "device_names": ["Intel(R) Xeon(R) Processor"] * 2,
            "cuda_visible_devices": "0,1",
            "slurm": {**SLURM_35, "gpus": None},
            "versions": VERSIONS,
        }
        if i < 3:
            attempt["stopped"] = DEADLINE
        attempts.append(attempt)
    return attempts


def job_35_run(root, run_id="timelimit", attempts=None):
    return write_run_folder(
        root,
        run_id,
        ROWS,
        {**BASE_PARAMS, "cpu_step": "kernels", "epochs": 2},
        setup={"threads": 1},
        attempts=attempts or job_35_attempts(),
    )


def gathered(paths, text=FULL_D, benchmarks=None):
    accounting = compute.Accounting(allocations=sacct.parse(text, UTC), benchmarks=benchmarks or {})
    return build_tables([load_run(p) for p in paths], accounting)


# --------------------------------------------------------------------------- parsing


def test_the_recorded_two_gpu_job_reads_as_sacct_printed_it():
    (job,) = sacct.parse(BRIEF_FORMAT_D, UTC)["32"]
    assert job.state == "COMPLETED"
    assert (job.gpus, job.cpus, job.mem_mb) == (2.0, 1.0, 1500.0)  # gres/gpu=2,cpu=1,mem=1500M
    assert job.elapsed_seconds == 6.0  # Elapsed 00:00:06
    assert job.start == dt.datetime(2026, 12, 1, 20, 26, 56, tzinfo=UTC)
    assert job.queue_wait_seconds == 0.0
    # No energy plugin on the test cluster: the steps say 0, which is blank, not 0 J.
    assert math.isnan(job.energy_joules)
    assert math.isnan(job.max_rss_mb)  # jobacct_gather/none measures nothing


def test_a_requeued_job_has_one_allocation_per_start_only_with_duplicates():
    for text in (BRIEF_FORMAT_D, FULL_D):
        starts = sacct.parse(text, UTC)["35"]
        assert [a.state for a in starts] == ["REQUEUED"] * 3 + ["COMPLETED"]
        assert [a.elapsed_seconds for a in starts] == [30.0, 30.0, 30.0, 21.0]
        # After each requeue SLURM held the job about two minutes before it started again.
        assert [a.queue_wait_seconds for a in starts] == [0.0, 121.0, 122.0, 122.0]
        assert all(a.gpus == 2.0 and a.nodes in ("", "localhost") for a in starts)
    (last,) = sacct.parse(FULL_PLAIN, UTC)["35"]  # plain sacct: the last start only
    assert last.elapsed_seconds == 21.0


def test_measured_energy_and_memory_come_from_the_steps():
    # The recorded format, with what a cluster with energy and memory accounting prints.
    text = "\n".join(
        [
            FULL_D.splitlines()[0],
            "7|COMPLETED|01:00:00|3600|billing=8,cpu=8,gres/gpu:a100=4,mem=64G,node=1|||"
            "2026-12-01T10:00:00|2026-12-01T10:05:00|2026-12-01T11:05:00|gpu01",
            "7.batch|COMPLETED|01:00:00|3600|cpu=8,gres/gpu:a100=4,mem=64G,node=1|812345K|"
            "5400000|2026-12-01T10:05:00|2026-12-01T10:05:00|2026-12-01T11:05:00|gpu01",
            "7.0|COMPLETED|00:59:00|3540|cpu=8,gres/gpu:a100=4,mem=64G,node=1|2.5G|5300000|"
            "2026-12-01T10:05:01|2026-12-01T10:05:01|2026-12-01T11:04:59|gpu01",
        ]
    )
    (job,) = sacct.parse(text, UTC)["7"]
    assert (job.gpus, job.cpus, job.mem_mb) == (4.0, 8.0, 65536.0)
    assert job.queue_wait_seconds == 300.0
    assert job.max_rss_mb == 2560.0  # the largest step's
    assert job.energy_joules == 5400000.0  # the batch step's (it spans the srun step)


@pytest.mark.parametrize(
    "text, mb",
    [("1500M", 1500.0), ("2G", 2048.0), ("812345K", 812345 / 1024), ("", math.nan)],
)
def test_sizes(text, mb):
    assert sacct.parse_size_mb(text) == pytest.approx(mb, nan_ok=True)


def test_durations_and_tres():
    assert sacct.parse_elapsed("1-02:03:04") == 93784.0
    assert sacct.parse_elapsed("05:06") == 306.0
    assert sacct.parse_tres("cpu=4,gres/gpu=2,gres/gpu:a100=2,mem=16000M") == {
        "cpu": 4.0,
        "gpus": 2.0,
        "mem_mb": 16000.0,
    }
    assert sacct.parse_energy_joules("1.5K") == 1500.0


def test_the_command_asks_for_every_start_and_the_steps():
    words = sacct.command(["32", "35"])
    assert words[:3] == ["sacct", "--duplicates", "--parsable2"]
    assert "-X" not in words  # the steps hold MaxRSS and energy
    assert words[words.index("-j") + 1] == "32,35"
    assert words[words.index("-o") + 1].split(",") == sacct.FIELDS


def test_a_bad_line_is_an_error():
    with pytest.raises(sacct.SacctError, match="line 2"):
        sacct.parse("JobIDRaw|State\n1|COMPLETED|extra\n")


# --------------------------------------------------------------------------- per run


def test_compute_columns_match_sacct_for_the_requeued_job(tmp_path):
    tables = gathered([job_35_run(tmp_path)])
    run = tables.runs.iloc[0]
    assert run["attempts"] == 4
    assert run["attempt_ends"] == "deadline,deadline,deadline,finished"
    assert run["attempt_wall_seconds"] == "30,30,30,21"
    assert run["wall_seconds"] == 111.0  # every allocation's Elapsed, not just the last
    assert run["queue_wait_seconds"] == 365.0
    assert (run["alloc_gpus"], run["alloc_cpus"], run["alloc_mem_mb"]) == (2.0, 1.0, 1500.0)
    assert run["gpu_hours"] == pytest.approx(2 * 111 / 3600)
    assert run["cpu_hours"] == pytest.approx(1 * 111 / 3600)
    assert pd.isna(run["energy_joules"]) and pd.isna(run["max_rss_mb"])
    assert run["compute_source"] == "sacct"
    attempts = tables.compute
    assert attempts["slurm_state"].tolist() == ["REQUEUED"] * 3 + ["COMPLETED"]
    assert attempts["started"].tolist()[0] == "2026-12-01T20:27:36+00:00"
    assert attempts["gpu_hours"].sum() == pytest.approx(run["gpu_hours"])


def test_compute_columns_match_sacct_for_the_two_gpu_job(tmp_path):
    attempt = {
        "started": "2026-12-01T20:27:00+00:00",
        "finished": "2026-12-01T20:27:00+00:00",
        "slurm": {**SLURM_35, "job_id": "32", "gpus": None},
    }
    folder = write_run_folder(
        tmp_path, "twogpu", ROWS, {**BASE_PARAMS, "epochs": 2}, attempts=[attempt]
    )
    run = gathered([folder], BRIEF_FORMAT_D).runs.iloc[0]
    assert (run["attempts"], run["wall_seconds"], run["alloc_gpus"]) == (1, 6.0, 2.0)
    assert run["gpu_hours"] == pytest.approx(2 * 6 / 3600)  # gres/gpu=2 x Elapsed


def test_starts_no_attempt_recorded_are_counted_as_failed(tmp_path):
    # Only the last attempt's record survived (the others died before any checkpoint):
    # the job's four allocations were still paid for.
    run = gathered([job_35_run(tmp_path, attempts=job_35_attempts([3]))]).runs.iloc[0]
    assert run["attempt_ends"] == "failed,failed,failed,finished"
    assert run["wall_seconds"] == 111.0


def test_a_job_id_whose_accounting_is_another_jobs_is_not_used(tmp_path):
    # Same id, other times (another cluster, or an id reused after a purge).
    attempts = job_35_attempts()
    for attempt in attempts:
        attempt["started"] = attempt["started"].replace("2026-12-01", "2026-11-01")
        attempt["finished"] = attempt["finished"].replace("2026-12-01", "2026-11-01")
    run = gathered([job_35_run(tmp_path, attempts=attempts)]).runs.iloc[0]
    assert run["compute_source"] == "run.json"
    assert run["attempt_wall_seconds"] == "26,27,26,15"  # the attempts' own times
    assert run["alloc_gpus"] == 0.0 and run["alloc_cpus"] == 1.0


def test_sacct_that_cannot_be_asked_is_said_and_run_json_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sacct.shutil, "which", lambda name: None)
    tables = gather_runs([job_35_run(tmp_path)], tmp_path / "out", sacct_source="auto")
    assert tables.runs.iloc[0]["compute_source"] == "run.json"
    assert "sacct is not on PATH" in capsys.readouterr().err
    assert "Note: SLURM accounting not read" in (tmp_path / "out" / "compute.md").read_text()


def test_a_local_run_from_its_benchmark(tmp_path):
    attempts = [
        {
            "started": "2026-12-01T10:00:00+00:00",
            "finished": "2026-12-01T10:00:30+00:00",
            "stopped": "received SIGINT",
        },
        {"started": "2026-12-01T10:05:00+00:00", "finished": "2026-12-01T10:05:20+00:00"},
    ]
    folder = write_run_folder(
        tmp_path,
        "local",
        ROWS,
        {**BASE_PARAMS, "epochs": 2},
        setup={"threads": 2},
        attempts=attempts,
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "local.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "22.5\t0:00:22\t760.22\t3557.61\t730.61\t737.52\t74.27\t4.31\t73.59\t41.0\n"
    )
    tables = gather_runs([folder], None, benchmark_dir=bench)
    run = tables.runs.iloc[0]
    assert run["attempt_ends"] == "interrupted,finished"
    assert run["attempt_wall_seconds"] == "30,22.5"  # run.json's, then the benchmark's
    assert run["compute_source"] == "run.json,benchmark"
    assert (run["alloc_gpus"], run["alloc_cpus"], run["max_rss_mb"]) == (0.0, 2.0, 760.22)
    assert run["cpu_hours"] == pytest.approx(2 * 52.5 / 3600) and run["gpu_hours"] == 0.0


def distributed_hour(root, setup: dict, **attempt):
    """A run folder of the distributed engine, one attempt of an hour."""
    hour = {"started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T11:00:00+00:00"}
    return write_run_folder(
        root,
        "dist",
        ROWS,
        {**BASE_PARAMS, "epochs": 2, "engine": "distributed"},
        setup=setup,
        attempts=[{**hour, **attempt}],
    )


def test_a_distributed_gpu_run_without_sacct_counts_a_gpu_per_stage_process(tmp_path):
    """Under srun each task sees its own GPU as cuda:0: two stage processes, two GPUs."""
    ranks = [
        {
            "rank": r,
            "local_rank": 0,
            "hostname": f"gpu{r}",
            "device": "cuda:0",
            "device_name": "NVIDIA H100",
            "gpu_uuid": f"GPU-{r}",
            "cuda_visible_devices": "0",
            "cpu_capability": "AVX2",
            "slurm_task_id": str(r),
        }
        for r in range(2)
    ]
    folder = distributed_hour(tmp_path, {"threads": 1, "devices": ["cuda:0"] * 2}, ranks=ranks)
    run = gather_runs([folder], None).runs.iloc[0]
    assert run["alloc_gpus"] == 2.0 and run["gpu_hours"] == pytest.approx(2.0)


def test_a_distributed_run_holds_every_stage_process_threads(tmp_path):
    """Two stage processes of 3 threads each for 1 h: 6 CPU cores, 6 CPU-hours (not 3)."""
    setup = {"threads": 3, "world_size": 2, "process_group_backend": "gloo"}
    folder = distributed_hour(tmp_path, setup)
    tables = gather_runs([folder], None)
    run = tables.runs.iloc[0]
    assert (run["alloc_cpus"], run["cpu_hours"]) == (6.0, pytest.approx(6.0))
    assert "6 CPU cores per run" in statement.statement(tables.runs, tables.compute).text


def killed_run(root, second_start: str, second_end: str, threads=1, **first):
    """A run whose first attempt died in epoch 2 (run.json records no end for it) and whose
    second resumed at epoch 2 (the checkpoint of epoch 1) and finished."""
    attempts = [
        {"started": "2026-12-01T10:00:00+00:00", "start_epoch": 1, **first},
        {"started": second_start, "finished": second_end, "start_epoch": 2},
    ]
    folder = write_run_folder(
        root,
        "killed",
        ROWS,
        {**BASE_PARAMS, "epochs": 2},
        setup={"threads": threads},
        attempts=attempts,
    )
    record = json.loads((folder / "run.json").read_text())
    del record["attempts"][0]["finished"]  # what a killed process leaves in its checkpoint
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_a_killed_attempt_counts_with_the_epochs_it_checkpointed(tmp_path):
    """The killed attempt counts with epoch 1's 4 s, marked estimated, in the totals."""
    folder = killed_run(tmp_path, "2026-12-01T10:05:00+00:00", "2026-12-01T10:05:30+00:00", 2)
    tables = gather_runs([folder], None)
    rows = tables.compute
    assert rows["ended"].tolist() == ["failed", "finished"]
    assert rows["wall_seconds"].tolist() == [4.0, 30.0]
    assert rows["wall_estimated"].tolist() == [True, False]
    run = tables.runs.iloc[0]
    assert run["wall_seconds"] == 34.0 and bool(run["wall_estimated"])
    assert run["cpu_hours"] == pytest.approx(2 * 34 / 3600)
    said = statement.statement(tables.runs, tables.compute).text
    assert "The wall time of 1 attempt killed without recording its end is estimated" in said


def test_a_killed_attempt_counts_until_its_last_checkpoint_where_recorded(tmp_path):
    """Training records each checkpoint's time in its attempt: 12.5 s measured, not epoch 1's
    4 s of training (still a lower bound: the work after it died with the process)."""
    folder = killed_run(
        tmp_path,
        "2026-12-01T10:05:00+00:00",
        "2026-12-01T10:05:30+00:00",
        checkpointed="2026-12-01T10:00:12.500000+00:00",
    )
    rows = gather_runs([folder], None).compute
    assert rows["wall_seconds"].tolist() == [12.5, 30.0]
    assert rows["wall_estimated"].tolist() == [True, False]


def test_a_killed_attempt_counts_no_longer_than_until_the_next_started(tmp_path):
    folder = killed_run(tmp_path, "2026-12-01T10:00:03+00:00", "2026-12-01T10:00:09+00:00")
    assert gather_runs([folder], None).compute["wall_seconds"].tolist() == [3.0, 6.0]


# --------------------------------------------------------------------------- statement


def test_statement_totals_are_the_sums_of_the_runs(tmp_path):
    paths = [job_35_run(tmp_path, f"seed={s}", attempts=job_35_attempts()) for s in (0, 1)]
    local = write_run_folder(
        tmp_path, "local", ROWS, {**BASE_PARAMS, "epochs": 2, "lr": 0.1}, setup={"threads": 4}
    )
    tables = gathered([*paths, local])
    said = statement.statement(tables.runs, tables.compute)
    runs = tables.runs
    assert said.total.runs == 3
    assert said.total.attempts == runs["attempts"].sum() == 9
    assert said.total.gpu_hours == pytest.approx(runs["gpu_hours"].sum())
    assert said.total.cpu_hours == pytest.approx(runs["cpu_hours"].sum())
    assert said.total.wall_seconds == pytest.approx(runs["wall_seconds"].sum())
    assert sum(t.gpu_hours for _, t in said.rows) == pytest.approx(said.total.gpu_hours)
    summary = tables.summary
    assert summary["gpu_hours_total"].sum() == pytest.approx(said.total.gpu_hours)
    markdown, latex = statement.markdown(said), statement.latex(said)
    total_cells = statement.cells(said.total)
    assert f"| **Total** | {' | '.join(total_cells)} |" in markdown
    assert "Total & " + " & ".join(total_cells) + r" \\" in latex
    text = said.text
    assert f"{statement.format_hours(runs['gpu_hours'].sum())} GPU-hours" in text
    assert "We trained 3 runs (2 configurations" in text
    assert "as SLURM jobs (35)" in text
    assert "6 stopped before a time limit" in text
    assert "Energy was not measured." in text
    assert "Intel(R) Xeon(R) Processor" in text


def test_number_formats():
    assert statement.format_hours(0.0000756) == "0.0000756"
    assert statement.format_hours(0.0617) == "0.0617"
    assert statement.format_hours(12.34) == "12.3"
    assert statement.format_hours(1234.5) == "1,234"
    assert statement.job_ranges(["35", "32", "33", "34", "40"]) == "32–35, 40"


def test_cli_with_recorded_sacct_output_and_no_torch(tmp_path):
    folder = job_35_run(tmp_path / "runs")
    (tmp_path / "sacct.txt").write_text(FULL_D)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('gather.py must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake), "TZ": "UTC"}
    out = tmp_path / "tables"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS_DIR / "gather.py"),
            "--out",
            str(out),
            "--sacct",
            str(tmp_path / "sacct.txt"),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(out / "compute.csv")
    assert rows["wall_seconds"].tolist() == [30.0, 30.0, 30.0, 21.0]
    assert rows["slurm_job_id"].tolist() == [35] * 4
    md = (out / "compute.md").read_text()
    assert "SLURM jobs (35)" in md and "0.0617 GPU-hours" in md
    assert r"\paragraph{Compute resources.}" in (out / "compute.tex").read_text()
