"""Figures of the gathered tables (epochs.csv and runs.csv), for a two-column paper.

Each figure is written as PNG (300 dpi) and PDF (Type 42 fonts), 3.5 in wide:

* ``loss``        train (top, solid) and test (bottom, dashed) cross-entropy against epoch;
* ``accuracy``    test accuracy (%) against epoch;
* ``throughput``  samples per second of each run (points) and the mean of each
  configuration (bars), with thousands separators.

Configurations and their labels are runs.csv's ``configuration`` column, as gathering
grouped them; nothing here regroups. Curves show the mean over seeds with a shaded ±1
sample-std band (none for a single seed). Runs without a metric (tutorial logs have only
train loss) are left out of that metric's plots. Colours are Okabe–Ito (colour-blind
safe), and the output bytes are deterministic: no dates, no software versions, seeded
jitter. Imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fmnist.report.labels import CONFIGURATION_COLUMN
from fmnist.rundir.files import atomic_write

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
"""Metadata left out so that the same tables give the same bytes."""


# --------------------------------------------------------------------------- configurations


def configurations(runs_df: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Configuration index of each run (order of first appearance) and the labels,
    from runs.csv's ``configuration`` column."""
    missing = [c for c in ("run_id", CONFIGURATION_COLUMN) if c not in runs_df.columns]
    if missing:
        raise ValueError(f"runs table has no column {', '.join(missing)} (write it with gather.py)")
    names = runs_df[CONFIGURATION_COLUMN].astype(str)
    labels = list(dict.fromkeys(names))
    return names.map({label: i for i, label in enumerate(labels)}), labels


def style(i: int) -> dict:
    """Colour (and, beyond 8 configurations, marker) of configuration i."""
    marker = MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)]
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": marker}


def epoch_stats(epochs_df: pd.DataFrame, config: pd.Series, metric: str) -> pd.DataFrame:
    """Mean, sample std and count of ``metric`` per configuration and epoch;
    ``config`` maps run_id to configuration index."""
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


# --------------------------------------------------------------------------- layout


def _legend_fontsize(labels: list[str]) -> float:
    return 7 if len(labels) <= 8 else 6


def _legend_layout(labels: list[str]) -> tuple[int, int]:
    """(columns, rows) of a legend of ``labels`` fitting in the figure width."""
    longest = max((len(s) for s in labels), default=1)
    col_width_pt = longest * _legend_fontsize(labels) * 0.52 + 24  # text + handle + gaps
    ncol = max(1, min(len(labels), int(WIDTH_IN * 72 * 0.95 // col_width_pt)))
    return ncol, math.ceil(len(labels) / ncol)


def _figure(nrows: int, panel_height: float, labels: list[str], sharex=True):
    """A figure with room below the panels for a legend of ``labels``."""
    ncol, rows = _legend_layout(labels) if labels else (1, 0)
    height = nrows * panel_height + 0.3 + 0.15 * rows
    fig, axes = plt.subplots(
        nrows, 1, figsize=(WIDTH_IN, height), sharex=sharex, layout="constrained", squeeze=False
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
    """One mean line (and ±1 std band) per configuration; ``used`` collects the lines."""
    for c, s in stats.groupby("config", sort=True):
        st = style(c)
        x = s["epoch"].to_numpy(dtype=float)
        y = s["mean"].to_numpy(dtype=float) * scale
        sd = s["std"].to_numpy(dtype=float) * scale
        (line,) = ax.plot(
            x,
            y,
            color=st["color"],
            marker=st["marker"],
            markevery=max(1, len(x) // 10) if st["marker"] else None,
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
    """Save ``fig`` as name.png and name.pdf, each atomically, and close it."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        atomic_write(
            path, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, metadata=METADATA[fmt])
        )
        paths.append(path)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- figures


LINE_STYLES = {"train loss": "-", "test loss": "--"}
"""The loss figure's line style of each panel, keyed as its legend names them."""


def loss_legend(present: list[int], labels: list[str]) -> tuple[list, list[str]]:
    """The loss figure's legend: a colour swatch per configuration (no line, so none looks
    solid or dashed), then the two line styles in black."""
    swatches = [
        plt.Line2D([], [], color=style(c)["color"], marker=style(c)["marker"] or "s", ls="none")
        for c in present
    ]
    keys = [plt.Line2D([], [], color="black", linestyle=ls) for ls in LINE_STYLES.values()]
    return swatches + keys, [labels[c] for c in present] + list(LINE_STYLES)


def plot_loss(epochs_df, config, labels, out_dir: Path) -> list[Path]:
    train = epoch_stats(epochs_df, config, "train_loss")
    test = epoch_stats(epochs_df, config, "test_loss")
    present = sorted(set(train["config"]) | set(test["config"]))
    handles, names = loss_legend(present, labels)
    fig, (ax_train, ax_test), ncol = _figure(2, 1.3, names)
    used: dict = {}
    panels = [(ax_train, train, "Train"), (ax_test, test, "Test")]
    for (ax, stats, title), ls in zip(panels, LINE_STYLES.values()):
        if stats.empty:
            _no_data(ax, f"{title.lower()} loss", hide_x=False)
        _plot_curves(ax, stats, 1.0, labels, used, linestyle=ls)
        ax.set_title(title, loc="left")
        _integer_epochs(ax)
    ax_test.set_xlabel("Epoch")
    fig.supylabel("Cross-entropy loss (nats)", fontsize=RC["axes.labelsize"])
    _add_legend(fig, handles, names, ncol)
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


def _throughput_points(ax, x: int, values: np.ndarray, color, rng) -> None:
    """A bar at the configuration's mean and a point per run, jittered apart."""
    ax.bar(x, values.mean(), width=0.6, color=color, alpha=0.35, edgecolor=color, linewidth=0.6)
    jitter = rng.uniform(-0.15, 0.15, size=len(values)) if len(values) > 1 else np.zeros(1)
    ax.scatter(x + jitter, values, s=8, color=color, edgecolors="black", linewidths=0.3, zorder=3)


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
    fig, ax = plt.subplots(
        figsize=(WIDTH_IN, 2.2 + (min(longest, 60) * 0.045 if rotate else 0)),
        layout="constrained",
    )
    if df.empty:
        _no_data(ax, "throughput")
    rng = np.random.default_rng(0)  # deterministic jitter
    for x, c in enumerate(present):
        values = df.loc[df["config"] == c, "sps"].to_numpy(dtype=float)
        _throughput_points(ax, x, values, style(c)["color"], rng)
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(names, rotation=90 if rotate else 0, fontsize=6 if len(present) > 8 else 7)
    ax.set_ylabel("Throughput (samples/s)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("Configuration")
    ax.set_ylim(bottom=0)
    return save_figure(fig, out_dir, "throughput")


# The columns the figures read: (required, numbers where present and not empty).
COLUMNS = {
    "epochs table": (
        ["epoch", "train_loss"],
        ["epoch", "train_loss", "test_loss", "test_accuracy"],
    ),
    "runs table": ([], ["mean_samples_per_second"]),
}


def check_numbers(df: pd.DataFrame, name: str) -> None:
    """ValueError naming the table and column a figure needs, or the column and row of a
    cell that is not a number."""
    required, numeric = COLUMNS[name]
    for column in required:
        if column not in df.columns:
            raise ValueError(f"{name} has no column {column} (write it with gather.py)")
    for column in (c for c in numeric if c in df.columns):
        values = df[column]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(
                f"{name}, column {column}, row {row + 2}: {values.iloc[row]!r} is not a number"
            )


def plot_all(epochs_df: pd.DataFrame, runs_df: pd.DataFrame, out_dir) -> list[Path]:
    """Write the loss, accuracy and throughput figures (PNG + PDF) into ``out_dir``.

    Raises ValueError if the tables do not fit together (no configuration column, or
    epochs of a run the runs table does not have).
    """
    out_dir = Path(out_dir)
    config, labels = configurations(runs_df)
    if "run_id" not in epochs_df.columns:
        raise ValueError("epochs table has no column run_id (write it with gather.py)")
    check_numbers(epochs_df, "epochs table")
    check_numbers(runs_df, "runs table")
    config_by_run = pd.Series(config.to_numpy(), index=runs_df["run_id"].astype(str))
    epochs_df = epochs_df.assign(run_id=epochs_df["run_id"].astype(str))
    unknown = set(epochs_df["run_id"]) - set(config_by_run.index)
    if unknown:
        raise ValueError(f"runs in epochs table but not in runs table: {sorted(unknown)[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(RC):
        paths = plot_loss(epochs_df, config_by_run, labels, out_dir)
        paths += plot_accuracy(epochs_df, config_by_run, labels, out_dir)
        paths += plot_throughput(runs_df, config, labels, out_dir)
    return paths
