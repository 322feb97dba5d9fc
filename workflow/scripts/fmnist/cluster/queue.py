"""Which SLURM job trains which run, and where each job stands: one ``squeue`` and one
``sacct`` call for all runs, whatever their number. Reading only; imports no torch.

The Snakemake SLURM plugin submits a run's training job with the comment
``rule_train_model_parallel_wildcards_{run}`` (squeue shows it while the job is queued or
running), says so in Snakemake's log (``.snakemake/log/``: "has been submitted with SLURM
jobid N (log: ...)", naming the run's folder of SLURM logs) and writes the job's output to
``.snakemake/slurm_logs/rule_train_model_parallel/{run}/{jobid}.log`` once it starts (the
jobs of earlier invocations stay listed there). Jobs that are still queued or running are
read from squeue; the latest job of every other run from sacct, asked once for all of them.
(Job arrays, --slurm-array-jobs, name no run: their runs are told by their folders alone.)
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

RULE = "train_model_parallel"
COMMENT_PREFIX = f"rule_{RULE}_wildcards_"
SLURM_LOGS = Path(".snakemake", "slurm_logs", f"rule_{RULE}")
SNAKEMAKE_LOGS = Path(".snakemake", "log")
SUBMITTED = re.compile(
    rf"has been submitted with SLURM jobid (?P<job>\d+) \(log: \S*/rule_{RULE}/(?P<run>[^/\s]+)/"
)
NEWEST_LOGS = 3  # Snakemake's logs read for submissions: its last invocations'
SQUEUE_FIELDS = ("JobID", "State", "Reason", "RestartCnt", "NodeList", "Comment")
SACCT_FIELDS = ("JobIDRaw", "State", "ExitCode")
ENDED_BADLY = {
    "BOOT_FAIL",
    "CANCELLED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
"""sacct's final states of a job that did not end by itself with exit 0."""
TIMEOUT_SECONDS = 60


class QueueError(RuntimeError):
    """squeue or sacct could not be run, or printed something else than asked."""


@dataclass
class Job:
    """One SLURM job of a run, as squeue (``queued``) or sacct last saw it."""

    job_id: str
    state: str = ""  # PENDING, RUNNING, FAILED, ... ("CANCELLED by 0" cut to CANCELLED)
    reason: str = ""  # why it is pending (squeue)
    nodes: str = ""  # where it runs (squeue)
    restarts: int = 0  # times SLURM started it again (requeued)
    exit_code: str = ""  # sacct's ExitCode, "2:0" (status:signal)
    earlier_states: list[str] = field(default_factory=list)  # its earlier allocations'
    queued: bool = False  # squeue lists it: pending, running, or between the two

    @property
    def ended_badly(self) -> bool:
        return not self.queued and self.state in ENDED_BADLY


def job_number(job_id: str) -> tuple[int, str]:
    """A sort key: SLURM numbers jobs in the order they were submitted."""
    head = job_id.split("_")[0].split(".")[0]
    return (int(head), job_id) if head.isdigit() else (-1, job_id)


def logged_jobs(workdir: Path, runs) -> dict[str, list[str]]:
    """The ids of the training jobs that started for each of ``runs``, oldest first, from
    the plugin's log folders under ``workdir`` (one listing per run that has one)."""
    root = Path(workdir) / SLURM_LOGS
    try:
        present = set(os.listdir(root))
    except OSError:
        return {}
    found = {}
    for run in runs:
        if run not in present:
            continue
        try:
            names = os.listdir(root / run)
        except OSError:
            continue
        ids = [name[: -len(".log")] for name in names if name.endswith(".log")]
        if ids:
            found[run] = sorted(ids, key=job_number)
    return found


def submitted_jobs(workdir: Path, newest: int = NEWEST_LOGS) -> dict[str, list[str]]:
    """The training jobs Snakemake's ``newest`` logs say it submitted, by run (a job
    cancelled before it started has no log of its own)."""
    folder = Path(workdir) / SNAKEMAKE_LOGS
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".snakemake.log"))
    except OSError:
        return {}
    found: dict[str, list[str]] = {}
    for name in names[-newest:]:
        try:
            text = (folder / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in SUBMITTED.finditer(text):
            found.setdefault(match["run"], []).append(match["job"])
    return found


def slurm_log(workdir: Path, run: str, job_id: str) -> Path:
    return Path(workdir) / SLURM_LOGS / run / f"{job_id}.log"


def _run(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        raise QueueError(f"{command[0]} is not on PATH")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError) as err:
        raise QueueError(f"{command[0]} failed: {err}") from err
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise QueueError(f"{command[0]} failed (exit {done.returncode}): {' '.join(said[-2:])}")
    return done.stdout


def squeue_command(user: str | None = None) -> list[str]:
    """squeue for ``user``'s jobs (default: this user), fields separated by "|"."""
    fields = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)
    return ["squeue", "-h", "-u", user or getpass.getuser(), "-O", fields]


def parse_squeue(text: str) -> tuple[dict[str, Job], dict[str, list[str]]]:
    """squeue's jobs by id, and the ids of each run's training jobs (from their comment)."""
    jobs: dict[str, Job] = {}
    runs: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < len(SQUEUE_FIELDS):
            continue
        job_id, state, reason, restarts, nodes, comment = cells[: len(SQUEUE_FIELDS)]
        jobs[job_id] = Job(
            job_id,
            state,
            "" if reason in ("None", "(null)") else reason,
            nodes="" if nodes == "(null)" else nodes,
            restarts=int(restarts) if restarts.isdigit() else 0,
            queued=True,
        )
        if comment.startswith(COMMENT_PREFIX):
            runs.setdefault(comment[len(COMMENT_PREFIX) :], []).append(job_id)
    return jobs, runs


def queued_jobs(user: str | None = None) -> tuple[dict[str, Job], dict[str, list[str]]]:
    """One squeue call: this user's jobs, and which of them train which run."""
    return parse_squeue(_run(squeue_command(user)))


def sacct_command(job_ids: list[str]) -> list[str]:
    """sacct for ``job_ids``, every allocation of each (-D: a requeued job has several),
    without their steps (-X), whenever they ran (-j alone asks for all time)."""
    return ["sacct", "-X", "-D", "-n", "-P", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(job_ids)]


def parse_sacct(text: str) -> dict[str, Job]:
    """Each job's last allocation, with its earlier ones' states (the requeues)."""
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < len(SACCT_FIELDS) or "." in cells[0] or "+" in cells[0]:
            continue
        job_id, state, exit_code = (cell.strip() for cell in cells[: len(SACCT_FIELDS)])
        state = state.split(" by ")[0]
        earlier = jobs.get(job_id)
        job = Job(job_id, state, exit_code=exit_code)
        if earlier is not None:
            job.earlier_states = [*earlier.earlier_states, earlier.state]
            job.restarts = len(job.earlier_states)
        jobs[job_id] = job
    return jobs


def ended_jobs(job_ids: list[str]) -> dict[str, Job]:
    """One sacct call for all ``job_ids`` (none for none)."""
    if not job_ids:
        return {}
    return parse_sacct(_run(sacct_command(sorted(set(job_ids), key=job_number))))
