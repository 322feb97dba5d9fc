"""Which runs ``snakemake verify`` reruns, from where, and with which options (config
``verify:``). Used by workflow/rules/verify.smk while Snakemake plans; imports no torch.

``verify.source`` is the folder holding the original run folders: ``results/runs`` (this
workflow's own runs, the default) or a copy of someone else's ``results/runs``. Each
chosen run is trained again from scratch into ``results/verify/{run}`` with the settings
its run.json records (``params``, and its ``run_id`` and ``swept``). For this workflow's
own runs that are still part of the config's sweep, those settings are the sweep's: the
training rule reruns a run whose settings changed, so its run.json always records them,
and the rerun can be planned before the original has finished.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fmnist.config import settings
from fmnist.config.naming import RUN_ID_RULE, is_run_id
from fmnist.rundir import runfiles

DEFAULT_SOURCE = runfiles.RUNS_DIR
VERIFY_DIR = "results/verify"
REPRODUCTION = f"{VERIFY_DIR}/reproduction.csv"
RUN_FILES = (runfiles.EPOCHS_FILE, runfiles.RECORD_FILE, runfiles.MODEL_FILE)


class PlanError(ValueError):
    """A verify: setting that names no run, or a source folder that cannot be verified."""


def _real(path) -> str:
    """Where a path really is: symbolic links followed, so that a link cannot make the
    workflow's own folders look like somewhere else."""
    return os.path.realpath(path)


def _same(a, b) -> bool:
    return _real(a) == _real(b)


def _inside(path, folder) -> bool:
    path, folder = _real(path), _real(folder)
    return os.path.commonpath([path, folder]) == folder


@dataclass
class VerifyPlan:
    """The verification the config asks for (``runs``: "first", "all" or run ids)."""

    runs_setting: str | list[str]
    source: str
    config_runs: dict[str, dict]
    swept: list[str]
    _records: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def local(self) -> bool:
        """True when the originals are this workflow's own results/runs."""
        return _same(self.source, DEFAULT_SOURCE)

    def check_source(self) -> None:
        if self.local:
            return
        for folder in (DEFAULT_SOURCE, VERIFY_DIR):
            if _inside(self.source, folder) or _inside(folder, self.source):
                raise PlanError(
                    f"verify.source {self.source}: overlaps {folder}, which this workflow "
                    "writes; copy the run folders to verify elsewhere (or use results/runs)"
                )
        if not Path(self.source).is_dir():
            raise PlanError(f"verify.source {self.source}: no such folder")

    def check_run_folder(self, run: str) -> None:
        """A run folder of the source: a plain name, and its files inside the source (a
        symbolic link out of it could lead to this workflow's own results)."""
        if not is_run_id(run):
            raise PlanError(
                f"verify.source {self.source}: run folder {run!r} is not a run id ({RUN_ID_RULE})"
            )
        if self.local:
            return
        for path in (self.original(run), *(self.original(run) / n for n in RUN_FILES)):
            if not _inside(path, self.source):
                raise PlanError(
                    f"verify.source {self.source}: {path} is a symbolic link to "
                    f"{_real(path)}, outside the source; copy the run folder instead"
                )

    def available(self) -> list[str]:
        """The run folders that can be verified: the config's runs (and finished ones
        in results/runs), or every folder of the source holding a run.json."""
        self.check_source()
        found = []
        if Path(self.source).is_dir():
            found = sorted(
                p.name for p in Path(self.source).iterdir() if (p / runfiles.RECORD_FILE).is_file()
            )
        order = list(self.config_runs) if self.local else []
        available = [*order, *(name for name in found if name not in order)]
        for run in available:
            self.check_run_folder(run)
        return available

    def runs(self) -> list[str]:
        """The runs to verify, in order."""
        available = self.available()
        if not available:
            raise PlanError(f"verify.source {self.source}: no run folder with a run.json")
        if self.runs_setting == "first":
            return available[:1]
        if self.runs_setting == "all":
            return available
        bad = [r for r in self.runs_setting if not is_run_id(r)]
        if bad:
            raise PlanError(f"verify.runs: {', '.join(map(repr, bad))}: not {RUN_ID_RULE}")
        unknown = [r for r in self.runs_setting if r not in available]
        if unknown:
            raise PlanError(
                f"verify.runs: no run {', '.join(map(repr, unknown))} in {self.source} "
                f"(there: {', '.join(available)})"
            )
        return list(self.runs_setting)

    def original(self, run: str) -> Path:
        return Path(self.source) / run

    def record(self, run: str) -> dict:
        if run not in self._records:
            try:
                record = runfiles.read_record(self.original(run) / runfiles.RECORD_FILE)
            except runfiles.RunFileError as err:
                raise PlanError(f"verify: {err}") from None
            self._records[run] = record
        return self._records[run]

    def threads_of(self, run: str) -> int | None:
        """The threads each of the original's processes trained with (None while it has
        not run): the rerun asks for as many."""
        if not (self.original(run) / runfiles.RECORD_FILE).is_file():
            return None
        return self.record(run)["setup"]["threads"]

    def settings_of(self, run: str) -> tuple[dict, str, list[str]]:
        """(params, run id, swept) the rerun is trained with."""
        if self.local and run in self.config_runs:
            return self.config_runs[run], run, list(self.swept)
        record = self.record(run)
        params = settings.ADDED_LATER | record["params"]
        missing = [k for k in settings.TRAIN_KEYS if k not in params]
        extra = [k for k in params if k not in settings.TRAIN_KEYS]
        if missing or extra:
            raise PlanError(
                f"verify: {self.original(run) / runfiles.RECORD_FILE} records other settings "
                f"than this workflow has (missing: {', '.join(missing) or 'none'}; unknown: "
                f"{', '.join(extra) or 'none'}): it was made by another version"
            )
        return params, record["run_id"], list(record["swept"])

    def options(self, run: str) -> str:
        """train.py's options for the rerun of ``run``, as the training rule writes them."""
        params, run_id, swept = self.settings_of(run)
        return shlex.join(settings.command_line(params) + ["--run-id", run_id, "--swept", *swept])

    def original_files(self) -> list[str]:
        files = [str(self.original(run) / name) for run in self.runs() for name in RUN_FILES]
        if not self.local:
            absent = [f for f in files if not Path(f).is_file()]
            if absent:
                raise PlanError(f"verify.source: missing {', '.join(absent)}")
        return files

    def rerun_files(self) -> list[str]:
        return [f"{VERIFY_DIR}/{run}/{name}" for run in self.runs() for name in RUN_FILES]

    def pairs(self) -> str:
        """The compare command's ``--pair ORIGINAL RERUN`` options."""
        return " ".join(
            f"--pair {shlex.quote(str(self.original(run)))} {shlex.quote(f'{VERIFY_DIR}/{run}')}"
            for run in self.runs()
        )

    def kept_up_to_date(self, outputs: list[str]) -> list[str]:
        """``outputs`` once a verification has been made (the default target then keeps it
        current and the report shows it), else nothing."""
        return list(outputs) if Path(REPRODUCTION).is_file() else []
