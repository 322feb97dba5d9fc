"""Gathering: read each input into a :class:`runfiles.Run`, build the tables, write them.

An input is a run folder (epochs.csv + run.json, checked against their schemas) or a log
of the original tutorial, converted on reading. Everything is read, built and formatted
before the first file is written, and each file is written atomically, so an error never
leaves a half-written or a mixed set of tables behind. Imports no torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fmnist.report import compute, paper, statement
from fmnist.report.formats import latex_escape
from fmnist.report.tables import Tables, build_tables
from fmnist.rundir.files import atomic_write_text
from fmnist.rundir.runfiles import IncompleteRunError, Run, RunFileError, read_run_dir
from fmnist.rundir.tutorial_log import read_tutorial_log

OUTPUT_FILES = [
    "epochs.csv",
    "runs.csv",
    "summary.csv",
    "summary.md",
    "summary.tex",
    "provenance.csv",
    "compute.csv",
    "compute.md",
    "compute.tex",
]


def load_run(path: str | os.PathLike, skip_bad_lines: bool = False) -> Run:
    """Read a run folder or a tutorial log, depending on what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_run_dir(path)
    if path.is_file():
        return read_tutorial_log(path, skip_bad_lines)
    raise RunFileError(f"{path}: no such run folder or log file")


def load_runs(paths, skip_bad_lines: bool = False, skipped: list | None = None) -> list[Run]:
    """Read every path, in order; run ids must be unique (they key every table).

    An incomplete run (a run folder that has not finished training or holds fewer epochs
    than run.json promises, a tutorial log without some of its epochs) is an error, unless
    ``skipped`` is a list: then it is left out and its error appended there.
    """
    runs, seen = [], {}
    for path in paths:
        try:
            run = load_run(path, skip_bad_lines)
        except IncompleteRunError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            continue
        if run.run_id in seen:
            raise RunFileError(
                f"{run.source}: duplicate run id {run.run_id!r} (also {seen[run.run_id]})"
            )
        seen[run.run_id] = run.source
        runs.append(run)
    if not runs:
        raise RunFileError("no runs given")
    return runs


def report_skipped(runs: list[Run], skip_bad_lines: bool) -> None:
    """Say on stderr which malformed tutorial-log lines were skipped: a skip is never silent."""
    total = 0
    for run in runs:
        if run.skipped_lines:
            total += len(run.skipped_lines)
            lines = ", ".join(map(str, run.skipped_lines))
            print(
                f"gather: skipped {len(run.skipped_lines)} malformed line(s) "
                f"in {run.source} (line {lines})",
                file=sys.stderr,
            )
    if skip_bad_lines:
        print(f"gather: skipped {total} malformed line(s) in total", file=sys.stderr)


def skipped_note(skipped: list[str]) -> str:
    """What the tables leave out, said where a reader of the summary sees it."""
    if not skipped:
        return ""
    return f"Left out: {len(skipped)} incomplete run(s) ({'; '.join(skipped)}).\n"


def render_tables(tables: Tables, skipped: list[str] = ()) -> dict[str, str]:
    """The tables' files (:data:`OUTPUT_FILES`), by name."""
    note = skipped_note(list(skipped))
    said = statement.statement(tables.runs, tables.compute)
    compute_notes = "".join(f"\nNote: {n}\n" for n in tables.notes)
    return {
        "epochs.csv": tables.epochs.to_csv(index=False),
        "runs.csv": tables.runs.to_csv(index=False),
        "summary.csv": tables.summary.to_csv(index=False),
        "summary.md": paper.summary_markdown(tables.summary, tables.config_columns)
        + (f"\n{note}" if note else ""),
        "summary.tex": paper.summary_latex(tables.summary, tables.config_columns)
        + (f"% {latex_escape(note)}" if note else ""),
        "provenance.csv": tables.provenance.to_csv(index=False),
        "compute.csv": tables.compute.to_csv(index=False),
        "compute.md": statement.markdown(said) + compute_notes,
        "compute.tex": statement.latex(said)
        + "".join(f"% Note: {latex_escape(n)}\n" for n in tables.notes),
    }


def write_tables(out_dir, tables: Tables, skipped=()) -> list[Path]:
    """Format every file first, then write each one atomically into ``out_dir``."""
    texts = render_tables(tables, skipped)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFileError(f"--out {out_dir}: not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in texts]


def gather_runs(
    paths,
    out_dir,
    skip_bad_lines: bool = False,
    skip_incomplete: bool = False,
    sacct_source: str = "never",
    benchmark_dir=None,
    tz=None,
) -> Tables:
    """Read ``paths``, write the tables into ``out_dir`` (unless it is None), return them.

    Raises :class:`runfiles.RunFileError`, naming the file at fault, before anything is
    written. With ``skip_incomplete``, incomplete runs are left out, and said so on stderr
    and under the summary tables. ``sacct_source``, ``benchmark_dir`` and ``tz``: where
    the compute columns come from (:func:`compute.load_accounting`).
    """
    skipped = [] if skip_incomplete else None
    runs = load_runs(paths, skip_bad_lines, skipped)
    report_skipped(runs, skip_bad_lines)
    for why in skipped or []:
        print(f"gather: left out an incomplete run: {why}", file=sys.stderr)
    accounting = compute.load_accounting(runs, sacct_source, benchmark_dir, tz)
    for note in accounting.notes:
        print(f"gather: {note}", file=sys.stderr)
    tables = build_tables(runs, accounting)
    if out_dir is not None:
        write_tables(out_dir, tables, skipped or [])
    return tables
