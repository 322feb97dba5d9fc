"""SLURM's accounting, as ``sacct --duplicates --parsable2`` prints it, read into allocations.

A requeued job keeps its id: every time it starts again SLURM writes a new record of the
same job id, which plain ``sacct`` hides and ``sacct -D`` (``--duplicates``) lists, each
with its own Submit, Start, End, Elapsed and AllocTRES. Each such record is one
:class:`Allocation`; the job's steps (``123.batch``, ``123.0``, ...), printed after their
allocation, add what only steps measure: MaxRSS and ConsumedEnergy. Fields are found by
their header names, so any order and any subset of :data:`FIELDS` can be read (the
recorded test fixtures use the fields sacct printed on the test cluster). Imports no torch.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field

FIELDS = [
    "JobIDRaw",
    "State",
    "Elapsed",
    "ElapsedRaw",
    "AllocTRES",
    "MaxRSS",
    "ConsumedEnergyRaw",
    "Submit",
    "Start",
    "End",
    "NodeList",
]
"""What :func:`query` asks sacct for (``-o``)."""

_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_ENERGY_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_NO_TIME = {"", "Unknown", "None", "N/A"}


class SacctError(RuntimeError):
    """sacct could not be run, or printed something that is not its parsable output."""


@dataclass
class Allocation:
    """One start of a SLURM job: its allocation record, with what its steps measured."""

    job_id: str
    state: str
    submit: dt.datetime | None
    start: dt.datetime | None
    end: dt.datetime | None
    elapsed_seconds: float
    tres: dict[str, float] = field(default_factory=dict)
    max_rss_mb: float = math.nan
    energy_joules: float = math.nan
    nodes: str = ""

    @property
    def gpus(self) -> float:
        return self.tres.get("gpus", 0.0)

    @property
    def cpus(self) -> float:
        return self.tres.get("cpu", math.nan)

    @property
    def mem_mb(self) -> float:
        return self.tres.get("mem_mb", math.nan)

    @property
    def queue_wait_seconds(self) -> float:
        """From submission (or, after a requeue, from the requeue) to the start."""
        if self.submit is None or self.start is None:
            return math.nan
        return max(0.0, (self.start - self.submit).total_seconds())


def _scaled(text: str, units: dict, what: str, suffix: str = "") -> float:
    """A number with an optional unit letter (``units``), NaN when blank."""
    text = text.strip()
    if not text:
        return math.nan
    match = re.fullmatch(rf"([0-9.]+)([{''.join(units)}]?){suffix}", text)
    if match is None:
        raise SacctError(f"not {what}: {text!r}")
    return float(match[1]) * units.get(match[2], 1)


def parse_size_mb(text: str) -> float:
    """sacct's sizes (``1500M``, ``2.5G``, ``123456K``, bytes without a unit) in MB."""
    return _scaled(text, _UNITS, "a size", suffix="[nc]?") / 2**20


def parse_energy_joules(text: str) -> float:
    """ConsumedEnergy(Raw) in joules; blank when the cluster does not measure it.

    SLURM writes 0 for every step where no energy plugin runs (the test cluster's
    ``acct_gather_energy/none``), so 0 means "not measured" too, never "no energy".
    """
    value = _scaled(text, _ENERGY_UNITS, "an energy")
    return value if value > 0 else math.nan


def parse_elapsed(text: str) -> float:
    """``[D-]HH:MM:SS``, ``MM:SS`` or ``MM:SS.mmm`` in seconds."""
    text = text.strip()
    if not text:
        return math.nan
    days, _, clock = text.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + (int(days) * 86400 if days else 0)


def parse_tres(text: str) -> dict[str, float]:
    """AllocTRES (``billing=1,cpu=1,gres/gpu=2,mem=1500M,node=1``) as numbers: ``cpu``,
    ``gpus`` (``gres/gpu``, else the sum of the typed ``gres/gpu:MODEL`` counts),
    ``mem_mb``, ``node``, ``billing``."""
    tres: dict[str, float] = {}
    typed_gpus = 0.0
    for item in filter(None, text.strip().split(",")):
        name, _, value = item.partition("=")
        if name == "mem":
            tres["mem_mb"] = parse_size_mb(value)
        elif name == "gres/gpu":
            tres["gpus"] = float(value)
        elif name.startswith("gres/gpu:"):
            typed_gpus += float(value)
        elif name in ("cpu", "node", "billing"):
            tres[name] = float(value)
    if "gpus" not in tres and typed_gpus:
        tres["gpus"] = typed_gpus
    return tres


def parse_time(text: str, tz: dt.tzinfo | None) -> dt.datetime | None:
    """sacct's local time (no zone written) as an aware datetime; None for Unknown.

    ``tz`` is the zone sacct printed in: that of the machine it ran on (None: this
    machine's local zone).
    """
    text = text.strip()
    if text in _NO_TIME:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()


def _rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split("|")
    if "JobIDRaw" not in header:
        raise SacctError(f"no JobIDRaw column in sacct's header: {lines[0]!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("|")
        if len(cells) != len(header):
            raise SacctError(f"sacct line {number}: {len(cells)} fields, header has {len(header)}")
        rows.append(dict(zip(header, cells)))
    return rows


def _elapsed(row: dict) -> float:
    raw = row.get("ElapsedRaw", "").strip()
    return float(raw) if raw else parse_elapsed(row.get("Elapsed", ""))


def _energy(row: dict) -> float:
    return parse_energy_joules(row.get("ConsumedEnergyRaw", row.get("ConsumedEnergy", "")))


def _allocation(row: dict, tz) -> Allocation:
    return Allocation(
        job_id=row["JobIDRaw"].strip(),
        state=row.get("State", "").split(" by ")[0].strip(),
        submit=parse_time(row.get("Submit", ""), tz),
        start=parse_time(row.get("Start", ""), tz),
        end=parse_time(row.get("End", ""), tz),
        elapsed_seconds=_elapsed(row),
        tres=parse_tres(row.get("AllocTRES", "")),
        max_rss_mb=parse_size_mb(row.get("MaxRSS", "")),
        energy_joules=_energy(row),
        nodes=row.get("NodeList", "").strip(),
    )


def _nanmax(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def _add_step(allocation: Allocation, row: dict, own_energy: bool) -> None:
    """MaxRSS is the largest of the steps'. Energy: the allocation's own figure where
    SLURM gives one, else the largest step's (the batch step spans the job on its node;
    adding the steps up would count the srun steps inside it twice)."""
    allocation.max_rss_mb = _nanmax(allocation.max_rss_mb, parse_size_mb(row.get("MaxRSS", "")))
    if not own_energy:
        allocation.energy_joules = _nanmax(allocation.energy_joules, _energy(row))


def parse(text: str, tz: dt.tzinfo | None = None) -> dict[str, list[Allocation]]:
    """Each job id's allocations, in the order sacct printed them (oldest first).

    A step line (``ID.batch``, ``ID.0``, ``ID.extern``) belongs to the last allocation
    of its job printed before it; heterogeneous-job components (``ID+N``) are skipped.
    """
    jobs: dict[str, list[Allocation]] = {}
    own_energy: set[int] = set()  # allocations whose record has an energy of its own
    for row in _rows(text):
        raw = row["JobIDRaw"].strip()
        if "+" in raw:
            continue
        job_id, dot, _step = raw.partition(".")
        if not dot:
            allocation = _allocation(row, tz)
            if not math.isnan(allocation.energy_joules):
                own_energy.add(id(allocation))
            jobs.setdefault(job_id, []).append(allocation)
        elif jobs.get(job_id):
            last = jobs[job_id][-1]
            _add_step(last, row, id(last) in own_energy)
    return jobs


def command(job_ids: list[str], since: dt.datetime | None = None) -> list[str]:
    """The sacct command line for ``job_ids``: every record of each (``-D``), steps
    included (MaxRSS and energy are measured per step), from ``since`` on."""
    words = ["sacct", "--duplicates", "--parsable2", "-o", ",".join(FIELDS)]
    words += ["-j", ",".join(job_ids)]
    if since is not None:
        words += ["-S", since.astimezone().strftime("%Y-%m-%dT%H:%M:%S"), "-E", "now"]
    return words


def query(job_ids: list[str], since: dt.datetime | None = None, timeout: float = 120) -> str:
    """sacct's output for ``job_ids`` (asked 200 at a time); SacctError if it fails."""
    if shutil.which("sacct") is None:
        raise SacctError("sacct is not on PATH")
    header, lines = None, []
    for i in range(0, len(job_ids), 200):
        try:
            done = subprocess.run(
                command(job_ids[i : i + 200], since),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise SacctError(f"sacct failed: {err}") from err
        if done.returncode != 0:
            raise SacctError(f"sacct failed (exit {done.returncode}): {done.stderr.strip()}")
        out = done.stdout.splitlines()
        if out:
            header = out[0]
            lines += out[1:]
    return "\n".join([header or "|".join(FIELDS), *lines]) + "\n"
