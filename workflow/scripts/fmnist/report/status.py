"""Where every run of a configuration stands, one line each: finished, training (epoch,
last test accuracy, time per epoch, time left), waiting in the SLURM queue, requeued,
stopped with a checkpoint, failed, not started; then a total.

Read from the run folders (fmnist.rundir.progress: run.json, epochs.csv, checkpoint.json,
the lock), the training logs' last lines, and, where SLURM is there, one squeue and one
sacct call for all runs (fmnist.cluster.queue). Reads only, writes nothing; imports no torch.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fmnist.cluster import queue
from fmnist.cluster.requeue import failures_requeued
from fmnist.rundir import progress, runfiles
from fmnist.rundir.progress import FolderFacts, LogFacts, clock

RUNS_DIR = Path(runfiles.RUNS_DIR)
LOGS_DIR = Path("results", "logs", queue.RULE)
STATES = ("finished", "training", "waiting", "requeued", "stopped", "failed", "not started")
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING"}
FRESH_LOG_SECONDS = 300.0
"""A log written this recently, by a process on another host that a lock file names, is
taken as a run still training (a long epoch logs a progress line every minute)."""
STARTING_SECONDS = 120.0
"""A log this young whose run has no lock yet: the training process is starting."""


@dataclass
class RunStatus:
    """One line of the status."""

    run: str
    state: str
    epoch: int | None = None  # the epoch it is in, or resumes in (finished: the last)
    epochs: int | None = None
    accuracy: float | None = None  # the last epoch's test accuracy (a fraction)
    epoch_seconds: float | None = None  # mean training seconds per epoch
    left: float | None = None  # estimated seconds of training left
    job: str = ""  # the latest SLURM job: "123 RUNNING"
    details: str = ""
    log: str | None = None  # the log to read (failed runs)

    def cells(self) -> list[str]:
        epoch = "-" if self.epoch is None else f"{self.epoch}/{self.epochs}"
        accuracy = "-" if self.accuracy is None else f"{100 * self.accuracy:.2f}%"
        seconds = "-" if self.epoch_seconds is None else f"{self.epoch_seconds:.1f} s"
        left = "-" if self.left is None or self.state == "finished" else clock(self.left)
        return [self.run, self.state, epoch, accuracy, seconds, left, self.job or "-", self.details]


HEADER = ["run", "state", "epoch", "test acc", "per epoch", "left", "SLURM job", "details"]


@dataclass
class Status:
    runs: list[RunStatus]
    notes: list[str]

    def counts(self) -> dict[str, int]:
        found = collections.Counter(r.state for r in self.runs)
        return {state: found[state] for state in STATES if found[state]}

    def total_line(self) -> str:
        said = ", ".join(f"{n} {state}" for state, n in self.counts().items())
        return f"total: {len(self.runs)} run{'s' * (len(self.runs) != 1)}: {said or 'none'}"

    def text(self) -> str:
        """Aligned columns, the details last (not padded), then the total and the notes."""
        rows = [HEADER, *(r.cells() for r in self.runs)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
        lines = [
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip()
            for row in rows
        ]
        return "\n".join([*lines, self.total_line(), *self.notes]) + "\n"

    def as_json(self) -> str:
        document = {
            "runs": [asdict(r) for r in self.runs],
            "total": {"runs": len(self.runs), **self.counts()},
            "notes": self.notes,
        }
        return json.dumps(document, indent=2) + "\n"


# --------------------------------------------------------------------------- collecting


@dataclass
class Sources:
    """What is known of one run besides its settings."""

    folder: FolderFacts
    log: LogFacts | None = None
    job: queue.Job | None = None
    job_ids: tuple[str, ...] = ()
    failures: int = 0  # failures requeued so far (.failure-requeues)


def collect(
    runs: dict[str, dict],
    workdir: Path = Path("."),
    slurm: bool = True,
    failure_retries: int | None = None,
    now: float | None = None,
) -> Status:
    """The status of ``runs`` ({run id: training settings}) in the workflow folder ``workdir``;
    ``slurm``: ask squeue and sacct (once each) about the runs' jobs."""
    workdir, now = Path(workdir), time.time() if now is None else now
    sources, notes = {}, []
    for run in runs:
        folder = progress.read_folder(workdir / RUNS_DIR / run)
        sources[run] = Sources(folder)
        if folder.exists and not folder.finished:
            sources[run].failures = read_count(workdir / RUNS_DIR / run)
        if not folder.finished:
            sources[run].log = progress.read_log(workdir / LOGS_DIR / f"{run}.log")
    if slurm:
        notes += find_jobs(sources, workdir)
    hostname = socket.gethostname()
    statuses = [
        decide(run, params, sources[run], workdir, now, hostname, failure_retries)
        for run, params in runs.items()
    ]
    notes += other_folders(workdir, runs)
    return Status(statuses, notes)


def read_count(run_dir: Path) -> int:
    """The run's failures requeued so far; 0 for a count that cannot be read (status
    reports, it does not judge the file)."""
    try:
        return failures_requeued(run_dir)
    except (OSError, ValueError):
        return 0


def find_jobs(sources: dict[str, Sources], workdir: Path) -> list[str]:
    """Each run's latest training job, from squeue (queued and running ones, by their
    comment) and the plugin's log folders, ended ones from sacct; notes on what failed."""
    notes = []
    logged = queue.logged_jobs(workdir, sources)
    submitted = queue.submitted_jobs(workdir)
    try:
        queued, by_comment = queue.queued_jobs()
    except queue.QueueError as err:
        queued, by_comment = {}, {}
        if logged or submitted:  # quiet where SLURM was never used
            notes.append(f"note: SLURM jobs not shown: {err}")
    for run, source in sources.items():
        ids = {*logged.get(run, ()), *submitted.get(run, ()), *by_comment.get(run, ())}
        source.job_ids = tuple(sorted(ids, key=queue.job_number))
        if source.job_ids and source.job_ids[-1] in queued:
            source.job = queued[source.job_ids[-1]]
    ended = [
        s.job_ids[-1] for s in sources.values() if s.job_ids and not s.job and not s.folder.finished
    ]
    try:
        found = queue.ended_jobs(ended)
    except queue.QueueError as err:
        found = {}
        notes.append(f"note: the state of {len(ended)} ended SLURM job(s) is unknown: {err}")
    for source in sources.values():
        if source.job is None and source.job_ids and not source.folder.finished:
            source.job = found.get(source.job_ids[-1], queue.Job(source.job_ids[-1]))
    return notes


def other_folders(workdir: Path, runs) -> list[str]:
    try:
        others = sorted(
            set(Path(workdir, RUNS_DIR).iterdir()) - {workdir / RUNS_DIR / r for r in runs}
        )
    except OSError:
        return []
    folders = [p.name for p in others if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        return []
    shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
    return [
        f"note: {len(folders)} folder(s) in {RUNS_DIR} are not runs of this configuration "
        f"({shown}): give the --configfile/--config they were made with to see them"
    ]


# --------------------------------------------------------------------------- deciding


def decide(
    run: str,
    params: dict,
    source: Sources,
    workdir: Path,
    now: float,
    hostname: str,
    failure_retries: int | None = None,
) -> RunStatus:
    """One run's line, from what is known of it (see the module's docstring)."""
    folder, job, position = source.folder, source.job, source.folder.position
    seconds = statistics.fmean(folder.epoch_seconds) if folder.epoch_seconds else None
    accuracy = folder.last_accuracy
    if position is not None and folder.epochs_done < position.epoch:
        # epochs.csv is an output: Snakemake deletes it when a job fails or is stopped.
        seconds, accuracy = position.epoch_seconds, position.test_accuracy
    status = RunStatus(
        run,
        "not started",
        epochs=params["epochs"],
        accuracy=accuracy,
        epoch_seconds=seconds,
        job=f"{job.job_id} {job.state}".strip() if job is not None else "",
    )
    if folder.finished:
        status.state, status.epoch = "finished", folder.epochs_done or status.epochs
    elif job is not None and job.queued:
        queued(status, source, now, failure_retries)
    else:
        here = progress.holder_is_training(folder.lock_holder, workdir / RUNS_DIR / run, hostname)
        elsewhere = here is None and source.log and now - source.log.mtime < FRESH_LOG_SECONDS
        if here or elsewhere:
            host = "" if here else f"on {folder.lock_holder.rsplit(' on ', 1)[-1]}"
            age = "" if here else f" (its log is {now - source.log.mtime:.0f} s old)"
            training(status, source, now, host + age)
        else:
            not_running(status, source, workdir, now, failure_retries)
    status.details = join(status.details, folder.problem or "")
    return status


def queued(status: RunStatus, source: Sources, now: float, failure_retries) -> None:
    """A run whose job squeue lists: training, or waiting (requeued, if it ran before)."""
    job, where = source.job, resume_point(source.folder, status.epochs)
    if job.state in RUNNING_STATES:
        training(status, source, now, f"on {job.nodes}" if job.nodes else "")
    else:
        status.state = "requeued" if job.restarts or "REQUEUE" in job.state else "waiting"
        status.epoch = where[0] if where else None
        pending = f"{job.state.lower()} ({job.reason})" if job.reason else job.state.lower()
        status.details = join(pending, where[1] if where else "")
        estimate(status, source.folder, None, now)
    status.details = join(status.details, requeue_text(source, failure_retries))


def not_running(status: RunStatus, source: Sources, workdir: Path, now: float, retries) -> None:
    """A run that nothing trains now: failed (its job, else its log says so), stopped with
    its checkpoint, starting (a young log, no lock yet), or not started."""
    folder, log, job, run = source.folder, source.log, source.job, status.run
    where = resume_point(folder, status.epochs)
    requeues = requeue_text(source, retries)
    log_path = str(LOGS_DIR / f"{run}.log")
    status.epoch = where[0] if where else None
    if job is not None and job.ended_badly:
        status.state, status.log = "failed", log_path
        said = join(exit_text(job.exit_code), log.error if log else "")
        slurm_log = queue.slurm_log(Path(), run, job.job_id)
        if not (workdir / slurm_log).exists():
            read = "it never started"
        else:
            read = f"read {log_path} (and {slurm_log})" if log else f"read {slurm_log}"
        status.details = join(said, read, requeues)
        return
    if log is not None and log.error:
        status.state, status.log = "failed", log_path
        status.details = join(f"{log.error}; read {log_path}", requeues)
    elif log is not None and log.stopped:
        status.state = "stopped"
        saved = where[1] if where else "checkpoint saved"
        status.details = join(f"{log.stopped}; {saved}: run again to resume", requeues)
    elif log is not None and not (folder.epochs_done or folder.checkpoint or log.finished):
        if now - log.mtime < STARTING_SECONDS:
            status.state, status.details, status.epoch = "training", "starting", 1
        else:
            status.state, status.log = "failed", log_path
            status.details = f"ended without a word in {log_path} (killed?)"
    elif folder.exists or log is not None:
        status.state = "stopped"
        if log is None:
            said = "interrupted (it has no log)"
        elif log.finished:
            said = "interrupted while writing its outputs"
        else:
            said = "interrupted (no error in its log)"
        saved = f"; {where[1]}: run again to resume" if where else ""
        status.details = join(f"{said}{saved}", requeues)
    if job is not None and status.state != "not started":
        status.details = join(status.details, f"last SLURM job {job.job_id} {job.state}".strip())
    if status.state == "stopped":
        estimate(status, folder, None, now)


def exit_text(code: str) -> str:
    """sacct's ExitCode ("2:0": status, then the signal that ended it) in words."""
    status, _, signal = code.partition(":")
    if signal not in ("", "0"):
        return f"killed by signal {signal}"
    return f"exit {status}" if status not in ("", "0") else ""


def join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def resume_point(folder: FolderFacts, epochs: int) -> tuple[int, str] | None:
    """(the epoch a run resumes in, where its checkpoint stands), from checkpoint.json, else
    from its epochs.csv; None when nothing has been saved."""
    position = folder.position
    if position is not None and position.epoch >= epochs:
        return epochs, "all epochs done: writes its outputs next"
    if position is not None:
        return position.epoch + 1, f"checkpoint at {position.text()}"
    if folder.checkpoint:
        return min(folder.epochs_done + 1, epochs), "checkpoint saved (position not recorded)"
    return None


def requeue_text(source: Sources, failure_retries: int | None) -> str:
    """How often the run's job was requeued, and why: its own stops (checkpoint.json), its
    failures (.failure-requeues) and what SLURM did (preemption, node failure)."""
    job, position = source.job, source.folder.position
    times = job.restarts if job is not None else 0
    allowed = f" of {failure_retries} allowed" if failure_retries is not None else ""
    if not times:
        counted = f"{source.failures} failure{'s' * (source.failures > 1)}"
        return f"{counted} requeued so far{allowed}" if source.failures else ""
    why = []
    stops = collections.Counter(position.stops if position else ())
    why += [f"{reason} ×{n}" if n > 1 else reason for reason, n in stops.items()]
    if source.failures:
        why.append(f"{source.failures} failure{'s' * (source.failures > 1)}{allowed}")
    if source.log is not None and source.log.requeued:
        why.append(f"last: {source.log.requeued}")
    slurm = [s for s in (job.earlier_states if job else []) if s not in ("REQUEUED", "")]
    why += [f"SLURM: {s.lower()}" for s in dict.fromkeys(slurm)]
    return f"requeued {times}× ({', '.join(why)})" if why else f"requeued {times}×"


def training(status: RunStatus, source: Sources, now: float, where: str) -> None:
    """A run that trains now: the epoch it is in, how far, and the time left."""
    folder, log = source.folder, source.log
    epochs = status.epochs
    status.state = "training"
    current = min(folder.epochs_done + 1, epochs)
    status.epoch = current
    line = log.progress if log is not None else None
    if line is not None and line.epoch != current:
        line = None
    details = []
    if folder.epochs_done >= epochs:
        details.append("writing its outputs")
    elif line is not None:
        details.append(f"batch {line.done}/{line.batches}, {line.samples_per_second:.0f} samples/s")
    elif folder.position is not None and folder.position.epoch + 1 == current:
        position = folder.position
        if position.batches_done:
            details.append(f"resumed with {position.batches_done}/{position.batches} batches done")
    status.details = join(*details, where)
    estimate(status, folder, line, now, since=log.mtime if line and log.progress_is_last else None)


def estimate(status: RunStatus, folder: FolderFacts, line, now: float, since=None) -> None:
    """The training time left: the rest of the current epoch (from its last progress line,
    less the time since it was written, else from the checkpoint's position) and the
    epochs after it, each at the mean epoch time so far (or the progress line's pace)."""
    epochs, current = status.epochs, status.epoch or folder.epochs_done + 1
    if folder.epochs_done >= epochs:
        status.left = 0.0
        return
    per_epoch = status.epoch_seconds
    if line is not None and line.fraction < 1 and per_epoch is None:
        per_epoch = line.left / (1 - line.fraction)
    if line is not None:
        in_epoch = max(0.0, line.left - (now - since if since is not None else 0.0))
    elif per_epoch is not None:
        position = folder.position
        done = position.fraction if position and position.epoch + 1 == current else 0.0
        in_epoch = (1 - done) * per_epoch
    else:
        return
    if per_epoch is None:
        return
    status.left = in_epoch + (epochs - current) * per_epoch
    if status.epoch_seconds is None and line is not None:
        status.epoch_seconds = per_epoch


# --------------------------------------------------------------------------- the config


def parse_config_args(entries: list[str]) -> dict:
    """``--config KEY=VALUE ...`` as Snakemake reads it (snakemake.cli.parse_config, which
    takes seconds to import): each value an int, else a float, else a bool, else YAML."""
    import yaml

    def as_bool(text):
        if text in ("True", "False"):
            return text == "True"
        raise ValueError(text)

    parsed = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][\w-]*\w", key):
            raise ValueError(f"--config {entry!r}: not KEY=VALUE")
        for parse in (int, float, as_bool, lambda t: yaml.load(t, Loader=yaml.BaseLoader), str):
            try:
                parsed[key] = None if value == "" else parse(value)
                break
            except (ValueError, yaml.YAMLError):
                continue
    return parsed


def load_config(base: Path, configfiles, config_args, schema: Path) -> dict:
    """The configuration Snakemake would run: ``base`` (config/config.yaml), each of
    ``configfiles`` merged over it key by key, then ``--config`` entries, validated against
    ``schema`` with its defaults filled in (WorkflowError, ValueError or OSError if not)."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    from fmnist.config.checks import validate_config

    config = load_configfile(str(base))
    for path in configfiles:
        update_config(config, load_configfile(str(path)))
    update_config(config, parse_config_args(config_args))
    validate_config(config, str(schema))
    return config
