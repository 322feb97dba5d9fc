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
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jsonschema

from fmnist.rundir.files import WriteError, atomic_write_text
from fmnist.schemas import load_schema

RUNS_DIR = "results/runs"
"""Where the workflow keeps its run folders (train.smk's outputs), from its working
directory."""
EPOCHS_FILE, RECORD_FILE, MODEL_FILE, CHECKPOINT_FILE, TIMELINE_FILE, LOCK_FILE = (
    "epochs.csv",
    "run.json",
    "model.pt",
    "checkpoint.pt",
    "timeline.csv",
    ".train.lock",  # one training process per run folder
)
IN_PROGRESS_FILES = (EPOCHS_FILE, CHECKPOINT_FILE, LOCK_FILE)
"""What a run folder holds from the start of training on; run.json comes only at its end."""
POSITION_FILE = "checkpoint.json"
"""checkpoint.pt's position in JSON, readable without torch (see fmnist.rundir.progress)."""
CHECKPOINT_SHARDS = "checkpoint.{number}.dcp"
"""A checkpoint's weights and optimizer state: a torch.distributed.checkpoint folder, a
shard per stage process; checkpoint.pt (the run's position) names the one it goes with."""


def shards_folder_name(number: int) -> str:
    return CHECKPOINT_SHARDS.format(number=number)


def shards_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(CHECKPOINT_SHARDS.format(number="*")))


def remove_shards(folder: Path, keep: str | None = None) -> None:
    """Delete every shards folder but ``keep`` (the one checkpoint.pt names: the others
    are older, or a save cut short)."""
    for shards in shards_folders(folder):
        if shards.name != keep:
            shutil.rmtree(shards, ignore_errors=True)


def remove_checkpoint(folder: Path) -> None:
    """Delete the run's checkpoint, its position first, then checkpoint.pt: shards it no
    longer names are removed by the next attempt if this one is killed in between."""
    (folder / POSITION_FILE).unlink(missing_ok=True)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    remove_shards(folder)


class RunFileError(Exception):
    """A run file that does not follow its format; the message names the file and key."""


EPOCH_COLUMNS = list(load_schema("epochs")["properties"])
"""The columns every epochs.csv written by training has, in order."""


@cache  # asked for every cell read
def column_schema(column: str) -> dict | None:
    """epochs.schema.yaml's entry for an epochs.csv column (None: not a column of the format)."""
    schema = load_schema("epochs")
    if column in schema["properties"]:
        return schema["properties"][column]
    return next(
        (
            entry
            for pattern, entry in schema["patternProperties"].items()
            if re.fullmatch(pattern.strip("^$"), column)
        ),
        None,
    )


def is_measurement(column: str) -> bool:
    """Whether an epochs.csv column is a reading of the machine (a time, a peak memory),
    not meant to repeat: what epochs.schema.yaml marks x-measurement."""
    return bool((column_schema(column) or {}).get("x-measurement"))


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


def _check_header(header: list[str], path: Path) -> None:
    """The columns of the format (epochs.schema.yaml): every required one, each once, no other."""
    problems = {
        "missing": [c for c in load_schema("epochs")["required"] if c not in header],
        "unknown": [c for c in header if column_schema(c) is None],
        "repeated": sorted({c for c in header if header.count(c) > 1}),
    }
    said = [
        f"{what} column(s) {', '.join(map(repr, names))}"
        for what, names in problems.items()
        if names
    ]
    if said:
        raise RunFileError(
            f"{path}:1: {'; '.join(said)} (the columns are those of "
            "workflow/schemas/epochs.schema.yaml)"
        )


@cache
def _column_validator(column: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(column_schema(column))


def parse_cell(text: str, column: str, where: str) -> int | float:
    """A cell of an epochs.csv ``column``, of the type and within the bounds its schema entry
    states; ``where`` (file, line, column) starts the error. NaN and infinity are refused:
    JSON, the schema's language, has neither, and training stops on a non-finite loss."""
    integer = column_schema(column).get("type") == "integer"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RunFileError(
            f"{where}: {text!r} is not {'an integer' if integer else 'a finite number'}"
        )
    error = next(_column_validator(column).iter_errors(value), None)
    if error is not None:
        raise RunFileError(f"{where}: {error.message}")
    return value


def _parse_rows(rows: list[list[str]], header: list[str], path: Path) -> dict[str, list]:
    """The cells by column, each checked against the schema; the k-th row must be epoch k."""
    columns: dict[str, list] = {h: [] for h in header}
    for lineno, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise RunFileError(f"{path}:{lineno}: expected {len(header)} values, got {len(row)}")
        for name, cell in zip(header, row):
            where = f"{path}:{lineno}: column {name}"
            columns[name].append(parse_cell(cell.strip(), name, where))
        epoch, expected = columns["epoch"][-1], len(columns["epoch"])
        if epoch != expected:
            raise RunFileError(
                f"{path}:{lineno}: column epoch: {epoch} where epoch {expected} belongs "
                "(one row per epoch, from 1, in order)"
            )
    return columns


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
    """The columns of an epochs.csv, every cell checked against epochs.schema.yaml (an
    error names the file, line and column); the format's columns first."""
    rows = read_csv_rows(path)
    header = [h.strip() for h in rows[0]]
    _check_header(header, path)
    columns = _parse_rows(rows[1:], header, path)
    n = len(columns["epoch"])
    if not n:
        raise RunFileError(f"{path}: no epochs")
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
    expected = load_schema("run")["properties"]["format"]["const"]
    if "format" in record and record["format"] != expected:
        raise RunFileError(
            f"{path}: format {record.get('format')!r}, written by another version of this "
            f"workflow (this one reads format {expected}): gather it with the version that "
            "wrote it, or train the run again"
        )
    check_record(record, path)
    return record


class IncompleteRunError(RunFileError):
    """A run folder or log whose files are well-formed but do not hold the finished run."""


def check_complete(run: Run) -> None:
    """Every epoch run.json promises (read_epochs has checked that row k is epoch k)."""
    promised, held = run.params["epochs"], len(run.epochs["epoch"])
    if held != promised:
        error = IncompleteRunError if held < promised else RunFileError
        raise error(
            f"run {run.run_id} ({run.source / EPOCHS_FILE}) holds epochs 1..{held}, but "
            f"run.json promises epochs 1..{promised}"
        )


def check_finished(folder: Path) -> None:
    """IncompleteRunError if training has begun in ``folder`` but not ended: run.json is
    written last, and the lock, epochs.csv and the checkpoint come before it."""
    if (folder / RECORD_FILE).exists():
        return
    present = [name for name in IN_PROGRESS_FILES if (folder / name).exists()]
    if present:
        raise IncompleteRunError(
            f"{folder / RECORD_FILE}: missing: run folder {folder} has not finished training "
            f"(still training, stopped or failed: it holds {', '.join(present)})"
        )


def read_run_dir(folder: str | os.PathLike) -> Run:
    """Read and check a run folder holding epochs.csv and run.json; IncompleteRunError if
    it does not hold a finished run."""
    folder = Path(folder)
    check_finished(folder)
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
