"""Gather per-run training results into tables.

Each input PATH is either

* a run folder ``results/runs/{run_id}/`` holding ``epochs.csv`` and
  ``run.json`` (written by the training script), or
* a plain-text log of the original tutorial, whose lines look like
  ``Epoch [1/10], Loss: 0.5234``; its run id is the file name without the
  extension and it carries only ``epoch`` and ``train_loss``.

Outputs, in ``--out DIR``:

* ``epochs.csv``   one row per run and epoch: run_id, parameters, metrics;
* ``runs.csv``     one row per run: run_id, parameters, final/best metrics;
* ``summary.csv``  one row per configuration (parameters except ``seed``):
  n_seeds and mean, sample std and Student-t 95 % confidence interval of the
  final test accuracy, final test loss and final train loss;
* ``summary.md`` and ``summary.tex``: the summary formatted for papers
  (accuracy in percent, "mean ± std").

All outputs are computed before anything is written, and every file is
written to a temporary file that is then renamed over the target, so an
error never leaves a half-written table behind.

This script must not import torch: gathering has to stay fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

EPOCH_METRICS = [
    "train_loss",
    "test_loss",
    "test_accuracy",
    "epoch_seconds",
    "samples_per_second",
]
"""Per-epoch metrics every run has (tutorial logs only have train_loss)."""

REQUIRED_EPOCH_COLUMNS = ["epoch", "train_loss"]

RUN_METRICS = [
    "final_test_accuracy",
    "best_test_accuracy",
    "best_epoch",
    "final_train_loss",
    "final_test_loss",
    "total_train_seconds",
    "mean_samples_per_second",
    "stage_devices",
    "device_names",
    "git_commit",
    "slurm_job_id",
]
"""Columns of runs.csv after run_id and the parameter columns.

``stage_devices`` is the device of each pipeline stage joined by "," (e.g.
"cuda:0,cuda:1"); ``device_names`` the matching human-readable names.  They
are not called ``devices`` because that is already a parameter column.
"""

SUMMARY_METRICS = ["final_test_accuracy", "final_test_loss", "final_train_loss"]
SUMMARY_STATS = ["mean", "std", "ci95_low", "ci95_high"]
SEED_COLUMN = "seed"
PROVENANCE_VERSIONS = ["python", "torch", "torchvision", "snakemake", "numpy", "cuda", "cudnn"]

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
TUTORIAL_LINE = re.compile(
    r"Epoch \[(?P<epoch>\d+)/(?P<total>\d+)\], Loss: (?P<loss>" + _FLOAT + r")",
    re.IGNORECASE,
)
"""A full epoch line of the tutorial's log (matched against the stripped line)."""


class GatherError(Exception):
    """Invalid or missing input; the message names the offending path."""


@dataclass
class Run:
    """One run: its metadata and its per-epoch columns (name -> list)."""

    run_id: str
    source: Path
    params: dict
    epochs: dict[str, list]
    info: dict = field(default_factory=dict)
    skipped_lines: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Student t quantile (no scipy)
# ---------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError("betainc needs a > 0 and b > 0")
    if not 0.0 <= x <= 1.0:
        raise ValueError("betainc needs 0 <= x <= 1")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if not df > 0:
        raise ValueError("df must be positive")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t distribution.

    Found by bisection on :func:`t_cdf` down to floating-point resolution.
    """
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if not df > 0:
        raise ValueError("df must be positive")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            raise ArithmeticError("t quantile out of range")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_std_ci95(values) -> tuple[int, float, float, float, float]:
    """n, mean, sample std (ddof=1) and Student-t 95 % CI of the non-NaN values.

    std and the CI are NaN when fewer than two values are present; all are
    NaN when none is.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return 1, mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


# ---------------------------------------------------------------------------
# Reading inputs
# ---------------------------------------------------------------------------


def _check_epochs_increasing(epochs, path: Path, line_numbers=None) -> None:
    for i in range(1, len(epochs)):
        if not epochs[i] > epochs[i - 1]:
            where = f"{path}"
            if line_numbers is not None:
                where += f":{line_numbers[i]}"
            raise GatherError(
                f"{where}: epoch numbers not increasing "
                f"(epoch {epochs[i]} after epoch {epochs[i - 1]})"
            )


def parse_param_value(value):
    """Parameter value as stored in a table cell: lists become "a,b"."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return math.nan
    return value


def _read_epochs_csv(csv_path: Path) -> dict[str, list]:
    """Columns of a training ``epochs.csv`` as lists (fast: no pandas per file).

    Every value must be a number (an empty cell is NaN); epochs must be
    integers.  A row with the wrong number of cells (e.g. a truncated last
    line) is an error naming the file and 1-based line number.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GatherError(f"{csv_path}: cannot read CSV: {e}") from e
    if not rows:
        raise GatherError(f"{csv_path}: empty file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_EPOCH_COLUMNS if c not in header]
    if missing:
        raise GatherError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise GatherError(f"{csv_path}: duplicate column names")
    columns: dict[str, list] = {h: [] for h in header}
    lists = [columns[h] for h in header]
    line_numbers = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        line_numbers.append(lineno)
        if len(row) != len(header):
            raise GatherError(f"{csv_path}:{lineno}: expected {len(header)} values, got {len(row)}")
        for h, target, cell in zip(header, lists, row):
            cell = cell.strip()
            try:
                target.append(float(cell) if cell else math.nan)
            except ValueError:
                raise GatherError(f"{csv_path}:{lineno}: {h} is not a number: {cell!r}") from None
    epochs = columns["epoch"]
    if not epochs:
        raise GatherError(f"{csv_path}: no epochs")
    for lineno, e in zip(line_numbers, epochs):
        if not (math.isfinite(e) and e == int(e)):
            raise GatherError(f"{csv_path}:{lineno}: epoch {e} is not an integer")
    columns["epoch"] = [int(e) for e in epochs]
    _check_epochs_increasing(columns["epoch"], csv_path, line_numbers)
    n = len(epochs)
    ordered = {"epoch": columns["epoch"]}
    for col in EPOCH_METRICS:
        ordered[col] = columns.get(col, [math.nan] * n)
    for col in header:
        ordered.setdefault(col, columns[col])
    return ordered


def read_run_dir(path: str | os.PathLike) -> Run:
    """Read a run folder holding ``epochs.csv`` and ``run.json``."""
    path = Path(path)
    csv_path, json_path = path / "epochs.csv", path / "run.json"
    for p in (csv_path, json_path):
        if not p.is_file():
            raise GatherError(f"{p}: missing (run folder {path} is incomplete)")
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GatherError(f"{json_path}: cannot read JSON: {e}") from e
    if not isinstance(info, dict):
        raise GatherError(f"{json_path}: expected a JSON object")
    params = info.get("params") or {}
    if not isinstance(params, dict):
        raise GatherError(f"{json_path}: 'params' must be an object")
    run_id = info.get("run_id") or path.name
    epochs = _read_epochs_csv(csv_path)
    return Run(run_id=str(run_id), source=path, params=params, epochs=epochs, info=info)


def parse_tutorial_log(
    path: str | os.PathLike, skip_bad_lines: bool = False
) -> tuple[dict[str, list], list[int]]:
    """Parse the tutorial's log into columns ``epoch`` and ``train_loss``.

    Lines not starting with "Epoch" are ignored.  A line starting with
    "Epoch" that is not a full ``Epoch [i/n], Loss: x`` line (or whose epoch
    lies outside 1..n) is malformed: an error naming the file and 1-based
    line number, unless ``skip_bad_lines``, in which case it is skipped.
    Returns the columns (as lists; the other metrics all NaN) and the line
    numbers skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise GatherError(f"{path}: cannot read: {e}") from e
    epochs, losses, line_numbers, skipped = [], [], [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("Epoch"):
            continue
        m = TUTORIAL_LINE.fullmatch(line)
        ok = m is not None and 1 <= int(m["epoch"]) <= int(m["total"])
        if not ok:
            if skip_bad_lines:
                skipped.append(lineno)
                continue
            raise GatherError(f"{path}:{lineno}: malformed epoch line: {raw!r}")
        epochs.append(int(m["epoch"]))
        losses.append(float(m["loss"]))
        line_numbers.append(lineno)
    if not epochs:
        raise GatherError(f"{path}: no epoch lines found")
    _check_epochs_increasing(epochs, path, line_numbers)
    frame = {"epoch": epochs, "train_loss": losses}
    for col in EPOCH_METRICS[1:]:
        frame[col] = [math.nan] * len(epochs)
    return frame, skipped


def read_tutorial_log(path: str | os.PathLike, skip_bad_lines: bool = False) -> Run:
    """A tutorial log as a :class:`Run` without parameters."""
    path = Path(path)
    frame, skipped = parse_tutorial_log(path, skip_bad_lines)
    return Run(run_id=path.stem, source=path, params={}, epochs=frame, skipped_lines=skipped)


def load_run(path: str | os.PathLike, skip_bad_lines: bool = False) -> Run:
    """Read a run folder or a tutorial log, depending on what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_run_dir(path)
    if path.is_file():
        return read_tutorial_log(path, skip_bad_lines)
    raise GatherError(f"{path}: no such run folder or log file")


def load_runs(paths, skip_bad_lines: bool = False) -> list[Run]:
    """Load every path; run ids must be unique."""
    runs, seen = [], {}
    for p in paths:
        run = load_run(p, skip_bad_lines)
        if run.run_id in seen:
            raise GatherError(
                f"{run.source}: duplicate run id {run.run_id!r} (also {seen[run.run_id]})"
            )
        seen[run.run_id] = run.source
        runs.append(run)
    if not runs:
        raise GatherError("no runs given")
    return runs


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def parameter_columns(runs: list[Run]) -> list[str]:
    """Union of all runs' parameter names, in order of first appearance."""
    cols: dict[str, None] = {}
    for run in runs:
        for key in run.params:
            cols.setdefault(key, None)
    return list(cols)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _param_series(values: list) -> pd.Series:
    """A parameter column; integers and booleans keep their type even when
    some runs lack the parameter (nullable Int64 / boolean)."""
    present = [v for v in values if not _is_missing(v)]
    if not present or len(present) == len(values):
        return pd.Series(values)
    filled = [None if _is_missing(v) else v for v in values]
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return pd.Series(filled, dtype="boolean")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return pd.Series(filled, dtype="Int64")
    return pd.Series(values)


def params_table(runs: list[Run], param_cols: list[str] | None = None) -> pd.DataFrame:
    """One row per run: run_id and the parameter columns.

    Lists (e.g. ``devices``) become comma-joined strings, null becomes NaN,
    and a run without a parameter (a tutorial log) gets NaN.
    """
    if param_cols is None:
        param_cols = parameter_columns(runs)
    data = {"run_id": pd.Series([r.run_id for r in runs], dtype=str)}
    for k in param_cols:
        data[k] = _param_series([parse_param_value(r.params.get(k)) for r in runs])
    return pd.DataFrame(data, columns=["run_id", *param_cols])


def epoch_columns(runs: list[Run]) -> list[str]:
    """Union of the runs' per-epoch columns, in order of first appearance."""
    cols: dict[str, None] = {}
    for run in runs:
        for key in run.epochs:
            cols.setdefault(key, None)
    return list(cols)


def build_epochs_table(runs: list[Run], params: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run and epoch: run_id, parameter columns, metrics.

    Metric columns only some runs have (e.g. ``peak_memory_mb_cuda0``) are
    NaN for the others.
    """
    if params is None:
        params = params_table(runs)
    lengths = np.array([len(r.epochs["epoch"]) for r in runs])
    table = params.take(np.repeat(np.arange(len(runs)), lengths)).reset_index(drop=True)
    metrics = {}
    for col in epoch_columns(runs):
        values: list = []
        for r, n in zip(runs, lengths):
            values.extend(r.epochs.get(col, [math.nan] * n))
        metrics[col] = np.array(values, dtype="int64" if col == "epoch" else float)
    return pd.concat([table, pd.DataFrame(metrics)], axis=1)


def _last(values: list) -> float:
    return float(values[-1]) if len(values) else math.nan


def _join(value) -> str | float:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return math.nan if value is None else str(value)


def run_metrics(run: Run) -> dict:
    """Final/best metrics and provenance of one run (the runs.csv columns)."""
    e = run.epochs
    acc = np.asarray(e["test_accuracy"], dtype=float)
    if np.isnan(acc).all():
        best_acc, best_epoch = math.nan, None
    else:
        i = int(np.nanargmax(acc))  # first maximum on ties
        best_acc, best_epoch = float(acc[i]), int(e["epoch"][i])
    seconds = np.asarray(e["epoch_seconds"], dtype=float)
    sps = np.asarray(e["samples_per_second"], dtype=float)
    info = run.info
    devices = info.get("devices") if isinstance(info.get("devices"), dict) else {}
    git = info.get("git") if isinstance(info.get("git"), dict) else {}
    slurm = info.get("slurm") if isinstance(info.get("slurm"), dict) else {}
    return {
        "final_test_accuracy": _last(acc),
        "best_test_accuracy": best_acc,
        "best_epoch": best_epoch,
        "final_train_loss": _last(e["train_loss"]),
        "final_test_loss": _last(e["test_loss"]),
        "total_train_seconds": math.nan if np.isnan(seconds).all() else float(np.nansum(seconds)),
        "mean_samples_per_second": math.nan if np.isnan(sps).all() else float(np.nanmean(sps)),
        "stage_devices": _join(devices.get("stages")),
        "device_names": _join(devices.get("names")),
        "git_commit": _join(git.get("commit")),
        "slurm_job_id": _join(slurm.get("job_id")),
    }


def build_runs_table(runs: list[Run], params: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: run_id, parameter columns, then :data:`RUN_METRICS`."""
    if params is None:
        params = params_table(runs)
    rows = [run_metrics(r) for r in runs]
    metrics = pd.DataFrame({c: [row[c] for row in rows] for c in RUN_METRICS})
    metrics["best_epoch"] = pd.Series(metrics["best_epoch"].tolist(), dtype="Int64")
    return pd.concat([params.reset_index(drop=True), metrics], axis=1)


def provenance_row(run: Run) -> dict:
    """Where and how one run was made: code, software, hardware, scheduler, data."""
    info = run.info

    def section(key) -> dict:
        value = info.get(key)
        return value if isinstance(value, dict) else {}

    attempts = info.get("attempts") if isinstance(info.get("attempts"), list) else []
    job_ids = [a["slurm"]["job_id"] for a in attempts if isinstance(a.get("slurm"), dict)]
    row = {
        "run_id": run.run_id,
        "git_commit": _join(section("git").get("commit")),
        "git_dirty": _join(section("git").get("dirty")),
        **{name: _join(section("versions").get(name)) for name in PROVENANCE_VERSIONS},
        "stage_devices": _join(section("devices").get("stages")),
        "device_names": _join(section("devices").get("names")),
        "threads": _join(section("config").get("threads")),
        "hostname": _join(info.get("hostname")),
        "cuda_visible_devices": _join(info.get("cuda_visible_devices")),
        "slurm_job_ids": " ".join(job_ids) if job_ids else math.nan,
        "slurm_partition": _join(section("slurm").get("partition")),
        "slurm_node": _join(section("slurm").get("node")),
        "attempts": len(attempts) if attempts else math.nan,
        "started": _join(info.get("started")),
        "finished": _join(info.get("finished")),
    }
    for name, md5 in sorted(section("data_md5").items()):
        row[f"md5_{name}"] = md5
    return row


def build_provenance_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run folder (tutorial logs carry no provenance)."""
    return pd.DataFrame([provenance_row(r) for r in runs if r.info])


def config_columns(param_cols) -> list[str]:
    """The parameter columns that define a configuration (all but seed)."""
    return [c for c in param_cols if c != SEED_COLUMN]


def build_summary_table(runs_df: pd.DataFrame, param_cols: list[str]) -> pd.DataFrame:
    """One row per configuration with n_seeds and statistics of final metrics.

    Configurations are grouped by every parameter column except ``seed``
    (NaN is a value of its own) and kept in order of first appearance.
    """
    group_cols = config_columns(param_cols)
    if group_cols:
        grouped = runs_df.groupby(group_cols, dropna=False, sort=False)
    else:
        grouped = runs_df.groupby(np.zeros(len(runs_df)), sort=False)
    rows = []
    for _, g in grouped:
        row = {c: g[c].iloc[0] for c in group_cols}
        row["n_seeds"] = len(g)
        for metric in SUMMARY_METRICS:
            _, mean, std, low, high = mean_std_ci95(g[metric].to_numpy(dtype=float))
            row.update(
                {
                    f"{metric}_mean": mean,
                    f"{metric}_std": std,
                    f"{metric}_ci95_low": low,
                    f"{metric}_ci95_high": high,
                }
            )
        rows.append(row)
    columns = [*group_cols, "n_seeds"] + [
        f"{m}_{s}" for m in SUMMARY_METRICS for s in SUMMARY_STATS
    ]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------
# Formatting for papers
# ---------------------------------------------------------------------------


def _isnan(x) -> bool:
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def format_value(value) -> str:
    """A parameter value for a table cell."""
    if _isnan(value):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def format_mean_std(mean, std, scale: float = 1.0, decimals: int = 2, pm: str = " ± ") -> str:
    """ "m ± s" (just "m" when s is NaN, "–" when m is NaN)."""
    if _isnan(mean):
        return "–"
    text = f"{mean * scale:.{decimals}f}"
    if not _isnan(std):
        text += f"{pm}{std * scale:.{decimals}f}"
    return text


def format_interval(low, high, scale: float = 1.0, decimals: int = 2, sep=", ") -> str:
    if _isnan(low) or _isnan(high):
        return "–"
    return f"[{low * scale:.{decimals}f}{sep}{high * scale:.{decimals}f}]"


def split_constant_columns(summary: pd.DataFrame, group_cols: list[str]):
    """(shown, constant) configuration columns for the formatted tables.

    Columns that vary between configurations are shown; the others are
    constant and go into the note.  Rows without any parameter (tutorial
    logs) are ignored when deciding.  If nothing varies, all are shown.
    """
    if not group_cols:
        return [], []
    with_params = summary[summary[group_cols].notna().any(axis=1)]
    varying = [c for c in group_cols if with_params[c].astype(str).nunique(dropna=False) > 1]
    if not varying:
        return list(group_cols), []
    return varying, [c for c in group_cols if c not in varying]


def display_table(summary: pd.DataFrame, group_cols: list[str], pm: str = " ± ", sep=", "):
    """The summary as strings for Markdown/LaTeX, plus the constant columns."""
    shown, constant = split_constant_columns(summary, group_cols)
    table = pd.DataFrame(index=summary.index)
    for c in shown:
        table[c] = [format_value(v) for v in summary[c]]
    if shown:
        no_params = summary[group_cols].isna().all(axis=1).to_numpy()
        table.loc[no_params, shown[0]] = "tutorial log"
    table["n"] = summary["n_seeds"].astype(int).astype(str)
    table["Test accuracy (%)"] = [
        format_mean_std(m, s, 100, 2, pm)
        for m, s in zip(summary["final_test_accuracy_mean"], summary["final_test_accuracy_std"])
    ]
    table["95% CI (%)"] = [
        format_interval(lo, hi, 100, 2, sep)
        for lo, hi in zip(
            summary["final_test_accuracy_ci95_low"],
            summary["final_test_accuracy_ci95_high"],
        )
    ]
    for metric, title in [
        ("final_test_loss", "Test loss"),
        ("final_train_loss", "Train loss"),
    ]:
        table[title] = [
            format_mean_std(m, s, 1, 4, pm)
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])
        ]
    first = summary[summary[group_cols].notna().any(axis=1)].iloc[0] if constant else None
    constants = {c: format_value(first[c]) for c in constant}
    return table.reset_index(drop=True), constants


NOTE = (
    "Final-epoch values, mean ± sample standard deviation over seeds; "
    "95% CI from Student's t; n = number of seeds."
)


def summary_markdown(summary: pd.DataFrame, group_cols: list[str]) -> str:
    """The summary as a Markdown table followed by a one-line note."""
    table, constants = display_table(summary, group_cols)
    text = table.to_markdown(index=False, disable_numparse=True)
    note = NOTE
    if constants:
        note += (
            " Same in all configurations: "
            + ", ".join(f"{k}={v}" for k, v in constants.items())
            + "."
        )
    return f"{text}\n\n{note}\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def summary_latex(summary: pd.DataFrame, group_cols: list[str]) -> str:
    """The summary as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    pm = "\x00pm\x00"  # placeholder, survives escaping
    table, constants = display_table(summary, group_cols, pm=pm)
    n_shown = len(table.columns) - 5

    def cell(text: str) -> str:
        return latex_escape(text).replace(pm, r" $\pm$ ")

    spec = "l" * n_shown + "r" * 5
    lines = [
        "% " + latex_escape(NOTE).replace("±", r"$\pm$"),
        "% Requires \\usepackage{booktabs}.",
    ]
    if constants:
        lines.append(
            "% Same in all configurations: "
            + latex_escape(", ".join(f"{k}={v}" for k, v in constants.items()))
        )
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(cell(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for _, row in table.iterrows():
        lines.append(" & ".join(cell(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_csv_atomic(path, df: pd.DataFrame) -> None:
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def build_tables(runs: list[Run]):
    """(epochs, runs, summary) tables and the parameter columns."""
    param_cols = parameter_columns(runs)
    params = params_table(runs, param_cols)
    epochs_df = build_epochs_table(runs, params)
    runs_df = build_runs_table(runs, params)
    summary_df = build_summary_table(runs_df, param_cols)
    return epochs_df, runs_df, summary_df, param_cols


def write_outputs(
    out_dir, epochs_df, runs_df, summary_df, param_cols, provenance_df=None
) -> list[Path]:
    """Format everything first, then write each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group_cols = config_columns(param_cols)
    md = summary_markdown(summary_df, group_cols)
    tex = summary_latex(summary_df, group_cols)
    outputs = [
        (out_dir / "epochs.csv", lambda p: write_csv_atomic(p, epochs_df)),
        (out_dir / "runs.csv", lambda p: write_csv_atomic(p, runs_df)),
        (out_dir / "summary.csv", lambda p: write_csv_atomic(p, summary_df)),
        (out_dir / "summary.md", lambda p: write_text_atomic(p, md)),
        (out_dir / "summary.tex", lambda p: write_text_atomic(p, tex)),
    ]
    if provenance_df is not None:
        outputs.append((out_dir / "provenance.csv", lambda p: write_csv_atomic(p, provenance_df)))
    for path, write in outputs:
        write(path)
    return [p for p, _ in outputs]


def gather(paths, out_dir, skip_bad_lines: bool = False):
    """Read ``paths``, write the tables into ``out_dir`` (unless it is None)
    and return ``(epochs_df, runs_df, summary_df)``.

    Skipped malformed tutorial-log lines are reported on stderr.
    Raises :class:`GatherError` on invalid input, before writing anything.
    """
    runs = load_runs(paths, skip_bad_lines)
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
    epochs_df, runs_df, summary_df, param_cols = build_tables(runs)
    if out_dir is not None:
        provenance_df = build_provenance_table(runs)
        write_outputs(out_dir, epochs_df, runs_df, summary_df, param_cols, provenance_df)
    return epochs_df, runs_df, summary_df


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="gather.py",
        description=(
            "Gather run folders (epochs.csv + run.json) and tutorial logs "
            "('Epoch [i/n], Loss: x' lines) into epochs.csv, runs.csv, "
            "summary.csv, summary.md, summary.tex and provenance.csv (run folders only)."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip malformed epoch lines in tutorial logs (reported on stderr) instead of failing",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder or tutorial log file")
    args = parser.parse_args(argv)
    try:
        gather(args.paths, args.out, skip_bad_lines=args.skip_bad_lines)
    except GatherError as e:
        print(f"gather.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
