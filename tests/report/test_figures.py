"""Tests of fmnist.report.figures on small gathered tables."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fmnist.report import figures
from fmnist.report.gathering import gather_runs
from helpers import RUN_HEADER, write_run_folder

FIGURES = ["loss", "accuracy", "throughput"]


def write_run(root: Path, run_id: str, lr: float, hidden: int, seed: int, n_epochs=4) -> Path:
    """A run folder with made-up but plausible curves (seeded by its parameters)."""
    rng = np.random.default_rng(seed + int(lr * 1e4) + hidden)
    rows = []
    for e in range(1, n_epochs + 1):
        loss = 1.0 / e + 0.05 * rng.random()
        acc = 0.7 + 0.04 * e + 0.01 * rng.random()
        rows.append((e, loss, loss + 0.1, acc, 2.0 + rng.random(), 5000 + 100 * seed))
    params = {
        "devices": "auto",
        "epochs": n_epochs,
        "batch_size": 100,
        "lr": lr,
        "hidden_sizes": hidden,
        "seed": seed,
        "tutorial_double_scaling": False,
        "microbatches": 1,
        "adam_impl": "for_loop",
    }
    return write_run_folder(
        root, run_id, rows, params, RUN_HEADER, swept=["lr", "hidden_sizes", "seed"]
    )


def tutorial_log(path: Path, n_epochs=5) -> Path:
    lines = [f"Epoch [{e}/{n_epochs}], Loss: {0.9 / e:.4f}" for e in range(1, n_epochs + 1)]
    path.write_text("\n".join(lines + ["Training finished."]) + "\n")
    return path


def gathered(tmp_path: Path, configs, seeds=(0, 1, 2), with_log=False):
    """(epochs, runs) as plot.py reads them back from gather.py's CSV files."""
    paths = [
        write_run(tmp_path / "runs", f"lr={lr}_h={h}_s={s}", lr, h, s)
        for lr, h in configs
        for s in seeds
    ]
    if with_log:
        paths.append(tutorial_log(tmp_path / "tutorial.log"))
    tables = tmp_path / "tables"
    gather_runs(paths, tables)
    return pd.read_csv(tables / "epochs.csv"), pd.read_csv(tables / "runs.csv")


def assert_png_not_blank(path: Path):
    img = matplotlib.image.imread(path)
    assert img.ndim == 3
    rgb = img[..., :3]
    assert rgb.std() > 0.02
    non_white = (rgb < 0.9).any(axis=-1)
    assert non_white.mean() > 0.005
    return img


def assert_pdf(path: Path, min_kb: float = 5):
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(data) > min_kb * 1024
    assert b"/Type3" not in data  # fonts embedded as TrueType (Type 42)
    assert b"/FontFile2" in data
    return data


def test_plot_all_files(tmp_path):
    epochs, runs = gathered(tmp_path, [(0.001, 100), (0.01, 100)], with_log=True)
    out = tmp_path / "figures"
    paths = figures.plot_all(epochs, runs, out)
    expected = sorted(f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf"))
    assert sorted(p.name for p in paths) == expected
    assert sorted(os.listdir(out)) == expected  # no temporary files left
    for name in FIGURES:
        img = assert_png_not_blank(out / f"{name}.png")
        # One column of a two-column paper: 3.5 in at 300 dpi.
        assert img.shape[1] == 1050
        assert_pdf(out / f"{name}.pdf")


def test_output_is_deterministic(tmp_path):
    epochs, runs = gathered(tmp_path, [(0.001, 100), (0.001, 200)], seeds=(0, 1))
    figures.plot_all(epochs, runs, tmp_path / "a")
    figures.plot_all(epochs, runs, tmp_path / "b")
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_atomic_save_gives_the_bytes_of_saving_to_a_path(tmp_path):
    with plt.rc_context(figures.RC):
        fig, ax = plt.subplots(figsize=(figures.WIDTH_IN, 2))
        ax.plot([1, 2, 3], [3, 1, 2], label="a")
        for fmt in figures.FORMATS:
            fig.savefig(tmp_path / f"direct.{fmt}", format=fmt, metadata=figures.METADATA[fmt])
        figures.save_figure(fig, tmp_path, "atomic")
    for fmt in figures.FORMATS:
        direct = (tmp_path / f"direct.{fmt}").read_bytes()
        assert (tmp_path / f"atomic.{fmt}").read_bytes() == direct, fmt


def legends_of(monkeypatch, epochs, runs, out) -> dict[str, list[str]]:
    """The legend entries (throughput: tick labels) of each figure plot_all draws."""
    seen = {}
    save = figures.save_figure

    def record(fig, out_dir, name):
        if name == "throughput":
            seen[name] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        else:
            seen[name] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "save_figure", record)
    figures.plot_all(epochs, runs, out)
    return seen


def test_groups_are_the_configuration_column(tmp_path, monkeypatch):
    """Figures take the groups from runs.csv as given and never regroup by parameters."""
    epochs, runs = gathered(tmp_path, [(0.001, 100), (0.01, 100)], seeds=(0, 1))
    assert runs["configuration"].tolist() == ["lr=0.001"] * 2 + ["lr=0.01"] * 2
    # Relabel across the parameter groups: one run of each lr in "alpha" and in "beta".
    runs["configuration"] = ["alpha", "beta", "beta", "alpha"]
    seen = legends_of(monkeypatch, epochs, runs, tmp_path / "figures")
    assert seen == {
        "loss": ["alpha", "beta", "train loss", "test loss"],
        "accuracy": ["alpha", "beta"],
        "throughput": ["alpha", "beta"],
    }


def drawn_figures(monkeypatch, epochs, runs, out) -> dict:
    """Each figure plot_all draws, drawn (its tick labels made) before it is saved."""
    drawn, save = {}, figures.save_figure

    def keep(fig, out_dir, name):
        fig.canvas.draw()
        drawn[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(figures, "save_figure", keep)
    figures.plot_all(epochs, runs, out)
    return drawn


def test_the_loss_legend_shows_which_line_is_train_and_which_test(tmp_path, monkeypatch):
    epochs, runs = gathered(tmp_path, [(0.001, 100), (0.01, 100)], seeds=(0,))
    fig = drawn_figures(monkeypatch, epochs, runs, tmp_path / "figures")["loss"]
    (legend,) = fig.legends
    styles = {
        t.get_text(): h.get_linestyle() for t, h in zip(legend.get_texts(), legend.legend_handles)
    }
    assert styles == {"lr=0.001": "None", "lr=0.01": "None", "train loss": "-", "test loss": "--"}
    train, test = fig.axes[:2]
    assert {line.get_linestyle() for line in train.get_lines()} == {"-"}
    assert {line.get_linestyle() for line in test.get_lines()} == {"--"}


def test_throughput_ticks_have_thousands_separators(tmp_path, monkeypatch):
    epochs, runs = gathered(tmp_path, [(0.001, 100)], seeds=(0, 1))  # about 5,000 samples/s
    fig = drawn_figures(monkeypatch, epochs, runs, tmp_path / "figures")["throughput"]
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "5,000" in ticks and "5000" not in ticks


def test_configurations_from_the_column():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "configuration": ["x", "y", "x"]})
    index, labels = figures.configurations(runs)
    assert index.tolist() == [0, 1, 0] and labels == ["x", "y"]
    with pytest.raises(ValueError, match="no column configuration"):
        figures.configurations(runs.drop(columns="configuration"))


def test_epoch_stats_mean_and_std():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "configuration": ["lr=0.1"] * 2 + ["lr=0.2"]})
    epochs = pd.DataFrame(
        {
            "run_id": ["a", "a", "b", "b", "c", "c"],
            "epoch": [1, 2, 1, 2, 1, 2],
            "test_accuracy": [0.5, 0.6, 0.7, 0.9, 0.4, np.nan],
        }
    )
    config, _ = figures.configurations(runs)
    stats = figures.epoch_stats(
        epochs, pd.Series(config.values, index=runs["run_id"]), "test_accuracy"
    )
    assert stats["config"].tolist() == [0, 0, 1]
    assert stats["epoch"].tolist() == [1, 2, 1]
    assert stats["mean"].tolist() == pytest.approx([0.6, 0.75, 0.4])
    assert stats["std"].iloc[0] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert stats["n"].tolist() == [2, 2, 1]
    assert np.isnan(stats["std"].iloc[2])


def test_epochs_of_an_unknown_run(tmp_path):
    runs = pd.DataFrame({"run_id": ["a"], "configuration": ["base"]})
    epochs = pd.DataFrame({"run_id": ["a", "z"], "epoch": [1, 1], "train_loss": [0.5, 0.4]})
    with pytest.raises(ValueError, match=r"not in runs table: \['z'\]"):
        figures.plot_all(epochs, runs, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


def test_tutorial_only(tmp_path, monkeypatch):
    logs = [tutorial_log(tmp_path / f"tut{i}.log", 3 + i) for i in range(2)]
    gather_runs(logs, tmp_path / "tables")
    epochs = pd.read_csv(tmp_path / "tables" / "epochs.csv")
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    out = tmp_path / "figures"
    legends = legends_of(monkeypatch, epochs, runs, out)
    assert legends == {
        "loss": ["tutorial log", "train loss", "test loss"],
        "accuracy": [],
        "throughput": [],
    }
    for name in FIGURES:
        assert_png_not_blank(out / f"{name}.png")
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_many_configurations(tmp_path):
    configs = [(lr, h) for lr in (0.0005, 0.001, 0.003, 0.01, 0.1) for h in (100, 200, 400, 800)]
    epochs, runs = gathered(tmp_path, configs, seeds=(0, 1))
    out = tmp_path / "figures"
    figures.plot_all(epochs, runs, out)
    for name in FIGURES:
        img = assert_png_not_blank(out / f"{name}.png")
        assert img.shape[1] == 1050
    ncol, rows = figures._legend_layout([f"lr={lr}, hidden_sizes={h}" for lr, h in configs])
    assert ncol >= 2 and rows <= 10
