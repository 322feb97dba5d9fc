"""Tests of workflow/scripts/plot.py on small gathered tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_script

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


gather = import_script("gather")
plot = import_script("plot")

import matplotlib.image  # noqa: E402  (after plot.py selected the Agg backend)

FIGURES = ["loss", "accuracy", "throughput"]
HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"


def write_run(root: Path, run_id: str, lr: float, hidden: int, seed: int, n_epochs=4):
    folder = root / run_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed + int(lr * 1e4) + hidden)
    lines = [HEADER]
    for e in range(1, n_epochs + 1):
        loss = 1.0 / e + 0.05 * rng.random()
        acc = 0.7 + 0.04 * e + 0.01 * rng.random()
        lines.append(f"{e},{loss},{loss + 0.1},{acc},{2.0 + rng.random()},{5000 + 100 * seed}")
    (folder / "epochs.csv").write_text("\n".join(lines) + "\n")
    params = {
        "devices": "auto",
        "epochs": n_epochs,
        "batch_size": 100,
        "lr": lr,
        "hidden_size": hidden,
        "seed": seed,
        "tutorial_double_scaling": False,
        "microbatches": 1,
        "adam_impl": "for_loop",
    }
    info = {
        "run_id": run_id,
        "params": params,
        "swept": ["lr", "hidden_size", "seed"],
        "devices": {"stages": ["cpu", "cpu"], "names": ["cpu", "cpu"]},
        "git": {"commit": None, "dirty": True},
        "slurm": None,
    }
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def tutorial_log(path: Path, n_epochs=5) -> Path:
    lines = [f"Epoch [{e}/{n_epochs}], Loss: {0.9 / e:.4f}" for e in range(1, n_epochs + 1)]
    path.write_text("\n".join(lines + ["Training finished."]) + "\n")
    return path


def gathered(tmp_path: Path, configs, seeds=(0, 1, 2), with_log=False):
    paths = [
        write_run(tmp_path / "runs", f"lr={lr}_h={h}_s={s}", lr, h, s)
        for lr, h in configs
        for s in seeds
    ]
    if with_log:
        paths.append(tutorial_log(tmp_path / "tutorial.log"))
    tables = tmp_path / "tables"
    epochs, runs, _ = gather.gather(paths, tables)
    return epochs, runs, tables


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
    epochs, runs, _ = gathered(tmp_path, [(0.001, 100), (0.01, 100)], with_log=True)
    out = tmp_path / "figures"
    paths = plot.plot_all(epochs, runs, out)
    expected = sorted(f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf"))
    assert sorted(p.name for p in paths) == expected
    assert sorted(os.listdir(out)) == expected  # no temporary files left
    for name in FIGURES:
        img = assert_png_not_blank(out / f"{name}.png")
        # One column of a two-column paper: 3.5 in at 300 dpi.
        assert img.shape[1] == 1050
        assert_pdf(out / f"{name}.pdf")


def test_output_is_deterministic(tmp_path):
    epochs, runs, _ = gathered(tmp_path, [(0.001, 100), (0.001, 200)], seeds=(0, 1))
    plot.plot_all(epochs, runs, tmp_path / "a")
    plot.plot_all(epochs, runs, tmp_path / "b")
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_labels():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "t"],
            "lr": [0.001, 0.001, 0.01, 0.01, np.nan],
            "hidden_size": [100, 100, 100, 200, np.nan],
            "epochs": [10, 10, 10, 10, np.nan],
            "seed": [0, 1, 0, 0, np.nan],
            "final_test_accuracy": [0.8, 0.8, 0.8, 0.8, np.nan],
        }
    )
    config, labels = plot.assign_configs(runs)
    assert config.tolist() == [0, 0, 1, 2, 3]
    assert labels == [
        "lr=0.001, hidden_size=100",
        "lr=0.01, hidden_size=100",
        "lr=0.01, hidden_size=200",
        "tutorial log",
    ]
    one = runs.iloc[:2]
    assert plot.assign_configs(one)[1] == ["base"]
    assert plot.parameter_columns(runs) == ["lr", "hidden_size", "epochs", "seed"]


def test_epoch_stats_mean_and_std():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "lr": [0.1, 0.1, 0.2], "seed": [0, 1, 0]})
    epochs = pd.DataFrame(
        {
            "run_id": ["a", "a", "b", "b", "c", "c"],
            "epoch": [1, 2, 1, 2, 1, 2],
            "test_accuracy": [0.5, 0.6, 0.7, 0.9, 0.4, np.nan],
        }
    )
    config, _ = plot.assign_configs(runs)
    stats = plot.epoch_stats(
        epochs, pd.Series(config.values, index=runs["run_id"]), "test_accuracy"
    )
    assert stats["config"].tolist() == [0, 0, 1]
    assert stats["epoch"].tolist() == [1, 2, 1]
    assert stats["mean"].tolist() == pytest.approx([0.6, 0.75, 0.4])
    assert stats["std"].iloc[0] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert stats["n"].tolist() == [2, 2, 1]
    assert np.isnan(stats["std"].iloc[2])


def test_tutorial_only(tmp_path):
    logs = [tutorial_log(tmp_path / f"tut{i}.log", 3 + i) for i in range(2)]
    epochs, runs, _ = gather.gather(logs, tmp_path / "tables")
    assert plot.assign_configs(runs)[1] == ["tutorial log"]
    out = tmp_path / "figures"
    plot.plot_all(epochs, runs, out)
    for name in FIGURES:
        assert_png_not_blank(out / f"{name}.png")
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_many_configurations(tmp_path):
    configs = [(lr, h) for lr in (0.0005, 0.001, 0.003, 0.01, 0.1) for h in (100, 200, 400, 800)]
    epochs, runs, _ = gathered(tmp_path, configs, seeds=(0, 1))
    out = tmp_path / "figures"
    plot.plot_all(epochs, runs, out)
    for name in FIGURES:
        img = assert_png_not_blank(out / f"{name}.png")
        assert img.shape[1] == 1050
    ncol, rows = plot._legend_layout([f"lr={lr}, hidden_size={h}" for lr, h in configs])
    assert ncol >= 2 and rows <= 10


def test_cli(tmp_path):
    _, _, tables = gathered(tmp_path, [(0.001, 100)], with_log=True)
    out = tmp_path / "figs"
    script = str(SCRIPTS / "plot.py")
    help_ = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--out-dir" in help_.stdout
    # A fake torch that fails on import proves plot.py does not import it.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('plot.py must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = subprocess.run(
        [
            sys.executable,
            script,
            "--epochs",
            tables / "epochs.csv",
            "--runs",
            tables / "runs.csv",
            "--out-dir",
            out,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for name in FIGURES:
        assert_png_not_blank(out / f"{name}.png")
        assert_pdf(out / f"{name}.pdf")
