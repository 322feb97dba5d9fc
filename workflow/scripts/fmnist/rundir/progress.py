"""Where a run stands, read without torch: the checkpoint's position, the progress lines a
long epoch logs, and what a run folder and its log hold at one moment.

checkpoint.pt is a torch file; training also writes its position as ``checkpoint.json``
beside it (after it, renamed into place), which :func:`read_position` trusts only while it
is not older than checkpoint.pt. Training logs a :func:`progress_line` every so many
seconds within an epoch; :func:`read_log` finds the last one again, with the log's last
error, its stop and its requeue. One definition of each line serves the writer and the
reader. Imports no torch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fmnist.rundir.files import atomic_write_text
from fmnist.rundir.runfiles import (
    CHECKPOINT_FILE,
    EPOCHS_FILE,
    LOCK_FILE,
    POSITION_FILE,
    RECORD_FILE,
)

POSITION_FORMAT = 1


# --------------------------------------------------------------------------- position


@dataclass(frozen=True)
class Position:
    """Where a checkpoint stands: ``epoch`` epochs done and ``batches_done`` of the next."""

    epoch: int
    epochs: int
    batches_done: int
    batches: int
    epoch_seconds_so_far: float = 0.0
    stops: tuple[str, ...] = ()  # why each attempt so far stopped early, oldest first
    saved: str = ""  # when (ISO 8601, UTC)
    test_accuracy: float | None = None  # the last epoch's, as epochs.csv has it
    epoch_seconds: float | None = None  # the epochs' mean training time

    @property
    def fraction(self) -> float:
        """How much of the epoch it resumes in is done."""
        return self.batches_done / self.batches if self.batches else 0.0

    def text(self) -> str:
        if self.epoch >= self.epochs:
            return f"all {self.epochs} epochs done"
        if not self.batches_done:
            return f"epoch {self.epoch} of {self.epochs} done"
        return f"epoch {self.epoch + 1}, {self.batches_done}/{self.batches} batches done"


def write_position(folder: Path, position: Position) -> None:
    """Write ``folder``/checkpoint.json (call it right after checkpoint.pt: it is trusted
    only while it is not older). Not synced to disk: a lost one only hides the position."""
    text = json.dumps({"format": POSITION_FORMAT, **dataclasses.asdict(position)})
    atomic_write_text(folder / POSITION_FILE, text + "\n", durable=False)


def read_position(folder: Path) -> Position | None:
    """checkpoint.pt's position, from checkpoint.json; None without a checkpoint, or when
    the JSON is missing, unreadable or older than checkpoint.pt (from another checkpoint)."""
    try:
        saved = os.stat(folder / CHECKPOINT_FILE).st_mtime_ns
        path = folder / POSITION_FILE
        if os.stat(path).st_mtime_ns < saved:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        accuracy, seconds = data.get("test_accuracy"), data.get("epoch_seconds")
        return Position(
            **{k: int(data[k]) for k in ("epoch", "epochs", "batches_done", "batches")},
            epoch_seconds_so_far=float(data.get("epoch_seconds_so_far", 0.0)),
            stops=tuple(map(str, data.get("stops", ()))),
            saved=str(data.get("saved", "")),
            test_accuracy=None if accuracy is None else float(accuracy),
            epoch_seconds=None if seconds is None else float(seconds),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- log lines


def clock(seconds: float) -> str:
    """1:02:03 for 3723 s (days as 26:00:00); "-" for an unknown duration."""
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def progress_line(
    epoch: int, epochs: int, done: int, batches: int, samples_per_second: float, left: float
) -> str:
    """What a long epoch logs every so many seconds: epoch ``epoch`` of ``epochs``, ``done``
    of ``batches`` batches, the speed since the epoch (or the attempt) began and the time
    the epoch's batches have left at that speed."""
    return (
        f"    progress: epoch {epoch}/{epochs}, batch {done}/{batches}, "
        f"{samples_per_second:.0f} samples/s, {clock(left)} left in the epoch"
    )


PROGRESS_LINE = re.compile(
    r"progress: epoch (?P<epoch>\d+)/(?P<epochs>\d+), batch (?P<done>\d+)/(?P<batches>\d+), "
    r"(?P<rate>[0-9.]+) samples/s, (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d) left in the epoch"
)


@dataclass(frozen=True)
class Progress:
    """A progress line read back."""

    epoch: int
    epochs: int
    done: int
    batches: int
    samples_per_second: float
    left: float  # seconds the epoch had left when the line was written

    @property
    def fraction(self) -> float:
        return self.done / self.batches if self.batches else 0.0


def parse_progress(line: str) -> Progress | None:
    match = PROGRESS_LINE.search(line)
    if match is None:
        return None
    return Progress(
        int(match["epoch"]),
        int(match["epochs"]),
        int(match["done"]),
        int(match["batches"]),
        float(match["rate"]),
        int(match["h"]) * 3600 + int(match["m"]) * 60 + int(match["s"]),
    )


# What train.py and the trainer print when an attempt ends otherwise than finished.
STOPPED_LINE = re.compile(r"^stopping early: (?P<why>.*?)\. Checkpoint saved")
REQUEUED_LINE = re.compile(r"^requeued SLURM job \d+ \((?P<why>.*?)\); it goes on")
ERROR_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Failure|Interrupt)\b)")
FINISHED_LINE = "Training finished."
LOG_TAIL_BYTES = 32768


@dataclass
class LogFacts:
    """The end of a training log: the last of each kind of line that tells where it stands."""

    mtime: float
    progress: Progress | None = None
    progress_is_last: bool = False  # nothing but the progress line since (its time: mtime)
    error: str | None = None
    stopped: str | None = None  # why it stopped early with a checkpoint
    requeued: str | None = None  # why it requeued its SLURM job
    finished: bool = False


def read_log(path: Path, tail: int = LOG_TAIL_BYTES) -> LogFacts | None:
    """The last ``tail`` bytes of a training log, read for its last lines of each kind;
    None if there is no log."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            mtime = os.fstat(handle.fileno()).st_mtime
            handle.seek(max(0, size - tail))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    facts = LogFacts(mtime)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines):
        if (progress := parse_progress(line)) is not None:
            facts.progress, facts.progress_is_last = progress, number == len(lines) - 1
        elif match := STOPPED_LINE.match(line):
            facts.stopped = match["why"]
        elif match := REQUEUED_LINE.match(line):
            facts.requeued = match["why"]
        elif line == FINISHED_LINE:
            facts.finished = True
        elif ERROR_LINE.match(line) and (
            line.startswith("error: ") or not (facts.error or "").startswith("error: ")
        ):
            facts.error = line  # an "error: ..." line says more than an exception's
    return facts


# --------------------------------------------------------------------------- run folders


@dataclass
class FolderFacts:
    """What a run folder holds at one moment (read with a few stat calls and small reads)."""

    exists: bool
    finished: bool = False  # run.json: written last
    epochs_done: int = 0
    last_accuracy: float | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    checkpoint: bool = False
    position: Position | None = None
    lock_holder: str | None = None  # "process PID on HOST", as the lock file says
    problem: str | None = None  # a file that could not be read


def read_epochs_light(path: Path) -> tuple[int, float | None, list[float]]:
    """epochs.csv's row count, last test accuracy and epoch times, without the checks of
    runfiles.read_epochs (a status must be quick, and a row being written is no error)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        return 0, None, []
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    accuracy, seconds = header.index("test_accuracy"), header.index("epoch_seconds")
    last = float(body[-1][accuracy]) if body else None
    return len(body), last, [float(r[seconds]) for r in body]


def read_folder(folder: Path, only_if_unfinished: bool = False) -> FolderFacts:
    """The facts of a run folder; the epochs are read for a finished run too (its accuracy)
    unless ``only_if_unfinished``."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return FolderFacts(exists=False)
    facts = FolderFacts(exists=True, finished=RECORD_FILE in names)
    facts.checkpoint = CHECKPOINT_FILE in names
    if EPOCHS_FILE in names and not (facts.finished and only_if_unfinished):
        try:
            facts.epochs_done, facts.last_accuracy, facts.epoch_seconds = read_epochs_light(
                folder / EPOCHS_FILE
            )
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as err:
            facts.problem = f"{folder / EPOCHS_FILE}: unreadable ({err})"
    if facts.checkpoint and POSITION_FILE in names:
        facts.position = read_position(folder)
    if LOCK_FILE in names and not facts.finished:
        with contextlib.suppress(OSError):
            facts.lock_holder = (folder / LOCK_FILE).read_text().strip() or None
    return facts


LOCK_HOLDER = re.compile(r"process (?P<pid>\d+) on (?P<host>\S+)")


def holder_is_training(holder: str | None, folder: Path, hostname: str) -> bool | None:
    """Whether the process a run folder's lock file names still trains it: True/False on
    this host (that process is alive and runs train.py on ``folder``, read from /proc),
    None on another host (this one cannot tell)."""
    match = LOCK_HOLDER.fullmatch(holder or "")
    if match is None:
        return False
    if match["host"] != hostname:
        return None
    try:
        words = Path(f"/proc/{match['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    script = any(word.endswith(b"train.py") for word in words)
    return script and any(word.rstrip(b"/").endswith(os.fsencode(folder.name)) for word in words)
