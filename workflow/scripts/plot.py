"""Plot gathered results (the epochs.csv and runs.csv written by gather.py).

Figures, each as PNG (300 dpi) and PDF (Type 42 fonts), 3.5 in wide:

* ``loss``        train (top) and test (bottom) cross-entropy against epoch;
* ``accuracy``    test accuracy (%) against epoch;
* ``throughput``  samples per second of each run (points) and the mean of
  each configuration (bars).

A configuration is the set of parameter columns except ``seed``; curves show
the mean over seeds with a shaded ±1 sample-std band (no band for a single
seed).  Runs without a metric (tutorial logs have only train loss) are left
out of the plots of that metric.  Output bytes are deterministic.

This script must not import torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gather import RUN_METRICS  # noqa: E402  (the columns runs.csv has besides parameters)

RUN_METRIC_COLUMNS = set(RUN_METRICS)

SEED_COLUMN = "seed"

OKABE_ITO = [
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#56B4E9",  # sky blue
    "#CC79A7",  # reddish purple
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
]
MARKERS = [None, "o", "s", "^", "D", "v", "P", "X"]
"""Second cue once the colours run out (configuration i uses MARKERS[i // 8])."""

WIDTH_IN = 3.5
FORMATS = ("png", "pdf")

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "fashion-mnist-mlp",
    "savefig.dpi": 300,
    "figure.dpi": 100,
}

METADATA = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
}


# ---------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------


def parameter_columns(runs_df: pd.DataFrame) -> list[str]:
    """Parameter columns of runs.csv: all but run_id and the run metrics."""
    return [c for c in runs_df.columns if c != "run_id" and c not in RUN_METRIC_COLUMNS]


def config_columns(runs_df: pd.DataFrame) -> list[str]:
    return [c for c in parameter_columns(runs_df) if c != SEED_COLUMN]


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


def assign_configs(runs_df: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Configuration index of each run (order of first appearance) and labels.

    A label names the parameters that vary between configurations, e.g.
    "lr=0.001, hidden_size=100"; "base" when only one configuration has
    parameters; "tutorial log" for runs without any parameter.
    """
    cols = config_columns(runs_df)
    if not cols:
        # Training always records parameters: none at all means tutorial logs
        # (or only a seed was recorded).
        only_logs = not parameter_columns(runs_df)
        return pd.Series(0, index=runs_df.index), ["tutorial log" if only_logs else "base"]
    keys = runs_df[cols].astype(object).where(runs_df[cols].notna(), None)
    key_tuples = [tuple(r) for r in keys.itertuples(index=False)]
    order: dict[tuple, int] = {}
    for k in key_tuples:
        order.setdefault(k, len(order))
    config = pd.Series([order[k] for k in key_tuples], index=runs_df.index)
    configs = list(order)
    with_params = [k for k in configs if any(v is not None for v in k)]
    varying = [i for i, c in enumerate(cols) if len({str(k[i]) for k in with_params}) > 1]
    labels = []
    for k in configs:
        if all(v is None for v in k):
            labels.append("tutorial log")
        elif not varying:
            labels.append("base")
        else:
            parts = [f"{cols[i]}={_fmt(k[i])}" for i in varying if k[i] is not None]
            labels.append(", ".join(parts))
    return config, labels


def style(i: int) -> dict:
    """Colour (and, beyond 8 configurations, marker) of configuration i."""
    marker = MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)]
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": marker}


def epoch_stats(epochs_df: pd.DataFrame, config: pd.Series, metric: str) -> pd.DataFrame:
    """Mean, sample std and count of ``metric`` per configuration and epoch."""
    if metric not in epochs_df.columns:
        return pd.DataFrame(columns=["config", "epoch", "mean", "std", "n"])
    df = pd.DataFrame(
        {
            "config": epochs_df["run_id"].map(config),
            "epoch": epochs_df["epoch"],
            "value": pd.to_numeric(epochs_df[metric], errors="coerce"),
        }
    ).dropna(subset=["config", "value"])
    stats = (
        df.groupby(["config", "epoch"], sort=True)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    stats["config"] = stats["config"].astype(int)
    return stats


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def _legend_fontsize(labels: list[str]) -> float:
    return 7 if len(labels) <= 8 else 6


def _legend_layout(labels: list[str]) -> tuple[int, int]:
    """(columns, rows) of a legend of ``labels`` fitting in the figure width."""
    longest = max((len(s) for s in labels), default=1)
    col_width_pt = longest * _legend_fontsize(labels) * 0.52 + 24  # text + handle + gaps
    ncol = max(1, min(len(labels), int(WIDTH_IN * 72 * 0.95 // col_width_pt)))
    return ncol, math.ceil(len(labels) / ncol)


def _figure(nrows: int, panel_height: float, labels: list[str], sharex=True):
    ncol, rows = _legend_layout(labels) if labels else (1, 0)
    height = nrows * panel_height + 0.3 + 0.15 * rows
    fig, axes = plt.subplots(
        nrows,
        1,
        figsize=(WIDTH_IN, height),
        sharex=sharex,
        layout="constrained",
        squeeze=False,
    )
    return fig, list(axes[:, 0]), ncol


def _add_legend(fig, handles, labels, ncol) -> None:
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=ncol,
            handlelength=1.8,
            columnspacing=1.0,
            fontsize=_legend_fontsize(labels),
        )


def _no_data(ax, what: str, hide_x: bool = True) -> None:
    if hide_x:
        ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, f"No {what} data", transform=ax.transAxes, ha="center", va="center")


def _plot_curves(ax, stats: pd.DataFrame, scale: float, labels, used: dict, **kw) -> None:
    for c, s in stats.groupby("config", sort=True):
        st = style(c)
        x = s["epoch"].to_numpy(dtype=float)
        y = s["mean"].to_numpy(dtype=float) * scale
        sd = s["std"].to_numpy(dtype=float) * scale
        n_points = len(x)
        (line,) = ax.plot(
            x,
            y,
            color=st["color"],
            marker=st["marker"],
            markevery=max(1, n_points // 10) if st["marker"] else None,
            label=labels[c],
            **kw,
        )
        used.setdefault(c, line)
        if np.isfinite(sd).any():
            ax.fill_between(x, y - sd, y + sd, color=st["color"], alpha=0.2, linewidth=0)


def _integer_epochs(ax) -> None:
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, matplotlib.ticker.MaxNLocator):
        locator.set_params(integer=True)


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Save ``fig`` as name.png and name.pdf, each atomically."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"
        try:
            fig.savefig(tmp, format=fmt, metadata=METADATA[fmt])
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        paths.append(path)
    plt.close(fig)
    return paths


def plot_loss(epochs_df, config, labels, out_dir: Path) -> list[Path]:
    train = epoch_stats(epochs_df, config, "train_loss")
    test = epoch_stats(epochs_df, config, "test_loss")
    present = sorted(set(train["config"]) | set(test["config"]))
    fig, (ax_train, ax_test), ncol = _figure(2, 1.3, [labels[c] for c in present])
    used: dict = {}
    for ax, stats, title, ls in [
        (ax_train, train, "Train", "-"),
        (ax_test, test, "Test", "--"),
    ]:
        if stats.empty:
            _no_data(ax, f"{title.lower()} loss", hide_x=False)
        _plot_curves(ax, stats, 1.0, labels, used, linestyle=ls)
        ax.set_title(title, loc="left")
        _integer_epochs(ax)
    ax_test.set_xlabel("Epoch")
    fig.supylabel("Cross-entropy loss (nats)", fontsize=RC["axes.labelsize"])
    handles = [
        plt.Line2D([], [], color=style(c)["color"], marker=style(c)["marker"]) for c in present
    ]
    _add_legend(fig, handles, [labels[c] for c in present], ncol)
    return save_figure(fig, out_dir, "loss")


def plot_accuracy(epochs_df, config, labels, out_dir: Path) -> list[Path]:
    acc = epoch_stats(epochs_df, config, "test_accuracy")
    present = sorted(set(acc["config"]))
    fig, (ax,), ncol = _figure(1, 2.0, [labels[c] for c in present])
    used: dict = {}
    if acc.empty:
        _no_data(ax, "test accuracy")
    _plot_curves(ax, acc, 100.0, labels, used)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Test accuracy (%)")
    _integer_epochs(ax)
    _add_legend(fig, [used[c] for c in present], [labels[c] for c in present], ncol)
    return save_figure(fig, out_dir, "accuracy")


def plot_throughput(runs_df, config, labels, out_dir: Path) -> list[Path]:
    if "mean_samples_per_second" in runs_df.columns:
        sps = pd.to_numeric(runs_df["mean_samples_per_second"], errors="coerce")
    else:
        sps = pd.Series(np.nan, index=runs_df.index)
    df = pd.DataFrame({"config": config, "sps": sps}).dropna()
    present = sorted(set(df["config"].astype(int)))
    names = [labels[c] for c in present]
    longest = max((len(s) for s in names), default=0)
    rotate = len(present) > 3 or longest > 12
    fig, axes = plt.subplots(
        figsize=(WIDTH_IN, 2.2 + (min(longest, 60) * 0.045 if rotate else 0)),
        layout="constrained",
    )
    ax = axes
    if df.empty:
        _no_data(ax, "throughput")
    rng = np.random.default_rng(0)  # deterministic jitter
    for x, c in enumerate(present):
        vals = df.loc[df["config"] == c, "sps"].to_numpy(dtype=float)
        color = style(c)["color"]
        ax.bar(
            x,
            vals.mean(),
            width=0.6,
            color=color,
            alpha=0.35,
            edgecolor=color,
            linewidth=0.6,
        )
        jitter = rng.uniform(-0.15, 0.15, size=len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(
            x + jitter,
            vals,
            s=8,
            color=color,
            edgecolors="black",
            linewidths=0.3,
            zorder=3,
        )
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(
        names,
        rotation=90 if rotate else 0,
        fontsize=6 if len(present) > 8 else 7,
    )
    ax.set_ylabel("Throughput (samples/s)")
    ax.set_xlabel("Configuration")
    ax.set_ylim(bottom=0)
    return save_figure(fig, out_dir, "throughput")


def plot_all(epochs_df: pd.DataFrame, runs_df: pd.DataFrame, out_dir) -> list[Path]:
    """Write loss, accuracy and throughput figures (PNG + PDF) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, labels = assign_configs(runs_df)
    config_by_run = pd.Series(config.to_numpy(), index=runs_df["run_id"].astype(str))
    epochs_df = epochs_df.assign(run_id=epochs_df["run_id"].astype(str))
    unknown = set(epochs_df["run_id"]) - set(config_by_run.index)
    if unknown:
        raise ValueError(f"runs in epochs table but not in runs table: {sorted(unknown)[:5]}")
    with plt.rc_context(RC):
        paths = plot_loss(epochs_df, config_by_run, labels, out_dir)
        paths += plot_accuracy(epochs_df, config_by_run, labels, out_dir)
        paths += plot_throughput(runs_df, config, labels, out_dir)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="plot.py",
        description="Plot loss, accuracy and throughput from gather.py's tables "
        "(loss/accuracy/throughput .png and .pdf).",
    )
    parser.add_argument("--epochs", required=True, help="epochs.csv from gather.py")
    parser.add_argument("--runs", required=True, help="runs.csv from gather.py")
    parser.add_argument("--out-dir", required=True, help="folder for the figures")
    args = parser.parse_args(argv)
    try:
        epochs_df = pd.read_csv(args.epochs)
        runs_df = pd.read_csv(args.runs)
    except (OSError, ValueError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    plot_all(epochs_df, runs_df, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
