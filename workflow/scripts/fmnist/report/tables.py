"""The tables gathering writes, built from a list of :class:`runfiles.Run` (pandas).

* epochs: one row per run and epoch (run_id, parameters, metrics);
* runs: one row per run (run_id, parameters, final/best metrics, provenance summary,
  configuration);
* summary: one row per configuration (mean, std and 95 % CI over seeds);
* provenance: one row per run folder (code, software, hardware, scheduler, data), built
  by :mod:`fmnist.report.provenance`;
* compute: one row per attempt (under SLURM: per allocation) with its wall time, GPUs,
  CPUs, GPU-hours and CPU-hours, built by :mod:`fmnist.report.compute`; runs.csv has each run's
  totals and summary.csv each configuration's.

A configuration is every parameter except the seed. Runs are grouped into configurations
once, here, and each gets its human label in the ``configuration`` column of runs.csv and
summary.csv, so the figures and anything else downstream never regroup. Imports no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmnist.config.naming import config_label, format_value
from fmnist.report import compute
from fmnist.report.formats import is_missing
from fmnist.report.labels import BASE_LABEL, CONFIGURATION_COLUMN, TUTORIAL_LABEL
from fmnist.report.provenance import join_cell, provenance_table, record_facts
from fmnist.report.stats import mean_std_ci95
from fmnist.rundir.runfiles import Run

SEED_COLUMN = "seed"

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
"""Columns of runs.csv after run_id and the parameter columns (``configuration`` is last).

``stage_devices`` is the device of each pipeline stage joined by "," (e.g.
"cuda:0,cuda:1"); ``device_names`` the matching human-readable names. They are not called
``devices`` because that is already a parameter column.
"""

SUMMARY_METRICS = {
    "final_test_accuracy": (0.0, 1.0),
    "final_test_loss": (0.0, math.inf),
    "final_train_loss": (0.0, math.inf),
}
"""The metrics summarised over seeds, with the bounds their confidence interval is clipped
to: an accuracy is a fraction, a cross-entropy is never negative."""
SUMMARY_STATS = ["mean", "std", "ci95_low", "ci95_high"]
SUMMARY_TOTALS = ["attempts", "wall_seconds", "gpu_hours", "cpu_hours"]
"""Compute summed over a configuration's runs: summary.csv's ``{name}_total`` columns."""


# --------------------------------------------------------------------------- cells


def cell_value(value):
    """A parameter value as a table cell: lists become "a,b", objects JSON, null NaN.

    The CSV cells keep the "," of the tables gathered so far, so that scripts reading them
    go on working; labels and run ids write values with :func:`naming.format_value`.
    """
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return math.nan if value is None else value


def _param_series(values: list) -> pd.Series:
    """A parameter column; integers and booleans keep their type even when some runs lack
    the parameter (nullable Int64 / boolean), so "3" is not written as "3.0"."""
    present = [v for v in values if not is_missing(v)]
    if not present or len(present) == len(values):
        return pd.Series(values)
    filled = [None if is_missing(v) else v for v in values]
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return pd.Series(filled, dtype="boolean")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return pd.Series(filled, dtype="Int64")
    return pd.Series(values)


def _union(keys_per_run) -> list[str]:
    """The union of the runs' keys, in order of first appearance."""
    return list(dict.fromkeys(key for keys in keys_per_run for key in keys))


def parameter_columns(runs: list[Run]) -> list[str]:
    """Every parameter any run has, in order of first appearance."""
    return _union(run.params for run in runs)


def config_columns(param_cols: list[str]) -> list[str]:
    """The parameter columns that define a configuration: all but the seed."""
    return [c for c in param_cols if c != SEED_COLUMN]


def params_table(runs: list[Run], param_cols: list[str]) -> pd.DataFrame:
    """One row per run: run_id and the parameter columns (NaN where a run lacks one)."""
    data = {"run_id": pd.Series([r.run_id for r in runs], dtype=str)}
    for key in param_cols:
        data[key] = _param_series([cell_value(r.params.get(key)) for r in runs])
    return pd.DataFrame(data, columns=["run_id", *param_cols])


# --------------------------------------------------------------------------- configurations


def _hashable(value):
    """A parameter value as part of a grouping key (a list of devices is not hashable)."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _labels(configs: list[dict | None], group_cols: list[str]) -> list[str]:
    """Name only the parameters that vary between the configurations that have any, in
    column order; "base" when none varies; "tutorial log" for runs without parameters."""
    with_params = [c for c in configs if c is not None]
    varying = [
        col for col in group_cols if len({format_value(c.get(col)) for c in with_params}) > 1
    ]
    labels = []
    for config in configs:
        if config is None:
            labels.append(TUTORIAL_LABEL)
            continue
        shown = {col: config[col] for col in varying if config.get(col) is not None}
        labels.append(config_label(shown) or BASE_LABEL)
    return labels


def configurations(runs: list[Run], group_cols: list[str]) -> tuple[list[int], list[str]]:
    """The configuration index of each run (order of first appearance) and their labels.

    Runs without parameters (tutorial logs) are a configuration of their own.
    """
    order: dict[tuple, int] = {}
    configs: list[dict | None] = []
    index = []
    for run in runs:
        values = {col: run.params.get(col) for col in group_cols}
        key = (bool(run.params), *(_hashable(v) for v in values.values()))
        if key not in order:
            order[key] = len(order)
            configs.append(values if run.params else None)
        index.append(order[key])
    return index, _labels(configs, group_cols)


# --------------------------------------------------------------------------- tables


def epochs_table(runs: list[Run], params: pd.DataFrame) -> pd.DataFrame:
    """One row per run and epoch; a column only some runs have (e.g.
    ``peak_memory_mb_cuda0``) is NaN for the others."""
    lengths = np.array([len(r.epochs["epoch"]) for r in runs])
    table = params.take(np.repeat(np.arange(len(runs)), lengths)).reset_index(drop=True)
    metrics = {}
    for col in _union(r.epochs for r in runs):
        values: list = []
        for run, n in zip(runs, lengths):
            values.extend(run.epochs.get(col, [math.nan] * n))
        metrics[col] = np.array(values, dtype="int64" if col == "epoch" else float)
    return pd.concat([table, pd.DataFrame(metrics)], axis=1)


def _last(values) -> float:
    return float(values[-1]) if len(values) else math.nan


def _nan_or(values: np.ndarray, reduce) -> float:
    return math.nan if np.isnan(values).all() else float(reduce(values))


def run_metrics(run: Run) -> dict:
    """Final/best metrics and provenance of one run (the runs.csv columns)."""
    epochs = run.epochs
    acc = np.asarray(epochs["test_accuracy"], dtype=float)
    best_acc, best_epoch = math.nan, None
    if not np.isnan(acc).all():
        i = int(np.nanargmax(acc))  # the first maximum on ties
        best_acc, best_epoch = float(acc[i]), int(epochs["epoch"][i])
    facts = record_facts(run.record)
    slurm = facts.pop("slurm")
    return {
        "final_test_accuracy": _last(acc),
        "best_test_accuracy": best_acc,
        "best_epoch": best_epoch,
        "final_train_loss": _last(epochs["train_loss"]),
        "final_test_loss": _last(epochs["test_loss"]),
        "total_train_seconds": _nan_or(np.asarray(epochs["epoch_seconds"], float), np.nansum),
        "mean_samples_per_second": _nan_or(
            np.asarray(epochs["samples_per_second"], float), np.nanmean
        ),
        **facts,
        "slurm_job_id": join_cell(slurm.get("job_id")),
    }


def runs_table(
    runs: list[Run], params: pd.DataFrame, labels: list[str], attempts: dict[str, list[dict]]
) -> pd.DataFrame:
    """One row per run: run_id, parameters, :data:`RUN_METRICS`, the compute columns
    (:data:`compute.RUN_COLUMNS`), configuration."""
    rows = [run_metrics(r) for r in runs]
    metrics = pd.DataFrame({c: [row[c] for row in rows] for c in RUN_METRICS})
    metrics["best_epoch"] = pd.Series(metrics["best_epoch"].tolist(), dtype="Int64")
    costs = compute.run_columns(runs, attempts)
    costs[CONFIGURATION_COLUMN] = labels
    return pd.concat([params.reset_index(drop=True), metrics, costs], axis=1)


def _config_totals(members: pd.DataFrame) -> dict:
    totals = {}
    for name in SUMMARY_TOTALS:
        values = pd.to_numeric(members[name], errors="coerce")
        totals[f"{name}_total"] = values.sum() if values.notna().any() else math.nan
    return totals


def summary_table(
    runs_df: pd.DataFrame, index: list[int], labels: list[str], group_cols: list[str]
) -> pd.DataFrame:
    """One row per configuration: its parameters, n_seeds, the statistics of each of
    :data:`SUMMARY_METRICS` (CI clipped to the metric's bounds), its label."""
    index = np.asarray(index)
    rows = []
    for i, label in enumerate(labels):
        members = runs_df[index == i]
        row = {c: members[c].iloc[0] for c in group_cols}
        row["n_seeds"] = len(members)
        for metric, (low, high) in SUMMARY_METRICS.items():
            result = mean_std_ci95(members[metric].to_numpy(dtype=float), low, high)
            row.update({f"{metric}_{s}": v for s, v in zip(SUMMARY_STATS, result[1:])})
        row.update(_config_totals(members))
        row[CONFIGURATION_COLUMN] = label
        rows.append(row)
    stats = [f"{m}_{s}" for m in SUMMARY_METRICS for s in SUMMARY_STATS]
    totals = [f"{name}_total" for name in SUMMARY_TOTALS]
    columns = [*group_cols, "n_seeds", *stats, *totals, CONFIGURATION_COLUMN]
    table = pd.DataFrame(rows, columns=columns)
    table["attempts_total"] = pd.Series(table["attempts_total"].tolist(), dtype="Int64")
    return table


# --------------------------------------------------------------------------- all of them


@dataclass
class Tables:
    epochs: pd.DataFrame
    runs: pd.DataFrame
    summary: pd.DataFrame
    provenance: pd.DataFrame
    config_columns: list[str]
    """The parameter columns that define a configuration (the summary's first columns)."""
    compute: pd.DataFrame
    notes: list[str]
    """What the compute columns could not use (e.g. sacct unavailable), for the reader."""


def build_tables(runs: list[Run], accounting: compute.Accounting | None = None) -> Tables:
    """Every table, from the runs in the order given (and what is known of their jobs)."""
    accounting = accounting or compute.Accounting()
    param_cols = parameter_columns(runs)
    group_cols = config_columns(param_cols)
    params = params_table(runs, param_cols)
    index, labels = configurations(runs, group_cols)
    attempts = compute.rows_by_run(runs, accounting)
    runs_df = runs_table(runs, params, [labels[i] for i in index], attempts)
    return Tables(
        epochs=epochs_table(runs, params),
        runs=runs_df,
        summary=summary_table(runs_df, index, labels, group_cols),
        provenance=provenance_table(runs),
        config_columns=group_cols,
        compute=compute.compute_table(attempts),
        notes=list(accounting.notes),
    )
