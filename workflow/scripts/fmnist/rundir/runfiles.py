"""The files of a run folder, results/runs/{run}/: their format, one writer and one reader.

``epochs.csv`` (one row per epoch) and ``run.json`` (provenance) are described by
workflow/schemas/epochs.schema.yaml and workflow/schemas/run.schema.yaml; training writes
them through :class:`EpochTable` and :func:`write_record`, gathering reads them back with
:func:`read_run_dir`, which checks them against those schemas and names the file and key
at fault. Imports no torch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from fmnist.rundir.files import WriteError, atomic_write_text
from fmnist.schemas import load_schema

EPOCHS_FILE, RECORD_FILE, MODEL_FILE, CHECKPOINT_FILE, TIMELINE_FILE = (
    "epochs.csv",
    "run.json",
    "model.pt",
    "checkpoint.pt",
    "timeline.csv",
)


class RunFileError(Exception):
    """A run file that does not follow its format; the message names the file and key."""


EPOCH_COLUMNS = list(load_schema("epochs")["properties"])
"""The columns every epochs.csv written by training has, in order."""


def is_measurement(column: str) -> bool:
    """Whether an epochs.csv column is a reading of the machine (a time, a peak memory),
    not meant to repeat: what epochs.schema.yaml marks x-measurement."""
    schema = load_schema("epochs")
    if column in schema["properties"]:
        return bool(schema["properties"][column].get("x-measurement"))
    return any(
        entry.get("x-measurement") and re.fullmatch(pattern.strip("^$"), column)
        for pattern, entry in schema["patternProperties"].items()
    )


def _key(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def check_record(record: dict, where: str | os.PathLike) -> None:
    """Raise RunFileError naming ``where`` and the key if ``record`` breaks run.schema.yaml."""
    errors = sorted(
        jsonschema.Draft202012Validator(load_schema("run")).iter_errors(record),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        first = errors[0]
        raise RunFileError(f"{where}: key {_key(first.absolute_path)}: {first.message}")


def write_record(folder: Path, record: dict) -> None:
    """Check ``record`` against the format, then write it as folder/run.json."""
    path = folder / RECORD_FILE
    check_record(record, path)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def format_cell(value) -> str:
    """repr() for floats, so that the CSV reads back to the same bits."""
    return repr(value) if isinstance(value, float) else str(value)


class EpochTable:
    """epochs.csv: rewritten from the history on (re)start, then appended once per epoch
    through the file this process opened (use it as a context manager to close it)."""

    def __init__(self, path: Path, history: list[dict]):
        self.path = path
        self.has_header = bool(history)
        text = self._header(history[0]) + "".join(map(self._line, history)) if history else ""
        atomic_write_text(path, text)
        self.handle = open(path, "a")  # noqa: SIM115 (appended to for the whole run)

    def __enter__(self) -> EpochTable:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    @staticmethod
    def _header(row: dict) -> str:
        return ",".join(row) + "\n"

    @staticmethod
    def _line(row: dict) -> str:
        return ",".join(map(format_cell, row.values())) + "\n"

    def append(self, row: dict) -> None:
        text = "" if self.has_header else self._header(row)
        try:
            self.handle.write(text + self._line(row))
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as err:
            raise WriteError(self.path, err) from err
        self.has_header = True

    def check(self, history: list[dict]) -> None:
        """The file as read back holds exactly ``history``, each epoch once, under its
        header: the last word before the run counts as finished."""
        expected = {key: [row[key] for row in history] for key in history[0]}
        try:
            columns = read_epochs(self.path)
            same = list(columns)[: len(expected)] == list(expected) and all(
                columns[key] == values for key, values in expected.items()
            )
        except RunFileError as err:
            same, columns = False, {"epoch": str(err)}
        if not same:
            raise RunFileError(
                f"{self.path} does not hold this run's {len(history)} epochs exactly "
                f"({columns['epoch']}): another process wrote to it"
            )


# --------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One run as gathering sees it, whatever it was read from.

    ``epochs`` maps each per-epoch column to its values; ``record`` is the run.json
    provenance (None for a run converted from a tutorial log, which has none).
    """

    run_id: str
    source: Path
    params: dict
    epochs: dict[str, list]
    record: dict | None = None
    skipped_lines: list[int] = field(default_factory=list)


def check_epochs_increasing(epochs: list[int], where, line_numbers: list[int]) -> None:
    for i in range(1, len(epochs)):
        if not epochs[i] > epochs[i - 1]:
            raise RunFileError(
                f"{where}:{line_numbers[i]}: epoch numbers not increasing "
                f"(epoch {epochs[i]} after epoch {epochs[i - 1]})"
            )


def _check_header(header: list[str], path: Path) -> None:
    missing = [c for c in ("epoch", "train_loss") if c not in header]
    if missing:
        raise RunFileError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise RunFileError(f"{path}: duplicate column names")


def _parse_rows(rows: list[list[str]], header: list[str], path: Path):
    """The cells as floats (an empty cell is NaN), and each row's 1-based line number."""
    columns: dict[str, list] = {h: [] for h in header}
    targets = [columns[h] for h in header]
    line_numbers = []
    for lineno, row in enumerate(rows, start=2):
        if not row:
            continue
        line_numbers.append(lineno)
        if len(row) != len(header):
            raise RunFileError(f"{path}:{lineno}: expected {len(header)} values, got {len(row)}")
        for name, target, cell in zip(header, targets, row):
            cell = cell.strip()
            try:
                target.append(float(cell) if cell else math.nan)
            except ValueError:
                raise RunFileError(f"{path}:{lineno}: {name} is not a number: {cell!r}") from None
    return columns, line_numbers


def read_csv_rows(path, error: type[Exception] | None = None) -> list[list[str]]:
    """A CSV file's rows, header first; ``error`` (RunFileError) names the file that cannot
    be read or is empty."""
    error = error or RunFileError
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise error(f"{path}: cannot read CSV: {err}") from err
    if not rows:
        raise error(f"{path}: empty file")
    return rows


def read_epochs(path: Path) -> dict[str, list]:
    """The columns of an epochs.csv (every metric of the format, NaN where absent)."""
    rows = read_csv_rows(path)
    header = [h.strip() for h in rows[0]]
    _check_header(header, path)
    columns, line_numbers = _parse_rows(rows[1:], header, path)
    if not line_numbers:
        raise RunFileError(f"{path}: no epochs")
    for lineno, epoch in zip(line_numbers, columns["epoch"]):
        if not (math.isfinite(epoch) and epoch == int(epoch)):
            raise RunFileError(f"{path}:{lineno}: epoch {epoch} is not an integer")
    columns["epoch"] = [int(e) for e in columns["epoch"]]
    check_epochs_increasing(columns["epoch"], path, line_numbers)
    n = len(line_numbers)
    ordered = {name: columns.get(name, [math.nan] * n) for name in EPOCH_COLUMNS}
    ordered.update(columns)
    return ordered


def read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFileError(f"{path}: cannot read JSON: {err}") from err
    if not isinstance(record, dict):
        raise RunFileError(f"{path}: expected a JSON object")
    check_record(record, path)
    return record


class IncompleteRunError(RunFileError):
    """A run folder whose files are well-formed but do not hold the finished run."""


FINAL_METRICS = ["train_loss", "test_loss", "test_accuracy"]


def check_complete(run: Run) -> None:
    """Every epoch run.json promises, once and in order, and a finite final row."""
    promised = list(range(1, run.params["epochs"] + 1))
    epochs = run.epochs["epoch"]
    where = f"run {run.run_id} ({run.source / EPOCHS_FILE})"
    if epochs != promised:
        raise IncompleteRunError(
            f"{where} holds epochs {epochs[0]}..{epochs[-1]} ({len(epochs)} rows), but "
            f"run.json promises epochs 1..{promised[-1]}"
        )
    bad = [m for m in FINAL_METRICS if not math.isfinite(run.epochs[m][-1])]
    if bad:
        raise IncompleteRunError(f"{where}: the final epoch's {', '.join(bad)} is not finite")


def read_run_dir(folder: str | os.PathLike) -> Run:
    """Read and check a run folder holding epochs.csv and run.json; IncompleteRunError if
    it does not hold a finished run."""
    folder = Path(folder)
    for name in (EPOCHS_FILE, RECORD_FILE):
        if not (folder / name).is_file():
            raise RunFileError(f"{folder / name}: missing (run folder {folder} is incomplete)")
    record = read_record(folder / RECORD_FILE)
    epochs = read_epochs(folder / EPOCHS_FILE)
    run = Run(record["run_id"], folder, record["params"], epochs, record)
    check_complete(run)
    return run


# --------------------------------------------------------------------------- attempts


def file_identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): files are written under another name and renamed into place, so a
    file written again has another identity."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


class RunFolderState:
    """The outputs and checkpoint a run folder holds at one moment: compared before and
    after an attempt by other processes, it says what that attempt wrote."""

    def __init__(self, folder: Path):
        self.record = file_identity(folder / RECORD_FILE)
        self.model = file_identity(folder / MODEL_FILE)
        self.checkpoint = file_identity(folder / CHECKPOINT_FILE)

    def outputs_written_since(self, before: RunFolderState) -> bool:
        """run.json is written last, once the rest is complete: a new one means finished."""
        return None not in (self.record, self.model) and self.record != before.record

    def checkpoint_saved_since(self, before: RunFolderState) -> bool:
        return self.checkpoint is not None and self.checkpoint != before.checkpoint
