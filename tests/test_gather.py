"""Tests of workflow/scripts/gather.py (run folders, tutorial logs, tables)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "gather.py"


gather = import_script("gather")

HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"
BASE_PARAMS = {
    "devices": "auto",
    "epochs": 3,
    "batch_size": 100,
    "lr": 0.001,
    "hidden_size": 200,
    "seed": 0,
    "tutorial_double_scaling": False,
    "microbatches": 1,
    "adam_impl": "for_loop",
}


def write_run(
    root: Path,
    run_id: str,
    rows: list[tuple],
    header: str = HEADER,
    *,
    slurm: dict | None = None,
    git_commit: str | None = "abc123",
    stages=("cpu", "cpu"),
    **params,
) -> Path:
    """A run folder like training writes it; ``params`` override BASE_PARAMS."""
    folder = root / run_id
    folder.mkdir(parents=True)
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    (folder / "epochs.csv").write_text("\n".join(lines) + "\n")
    info = {
        "run_id": run_id,
        "params": {**BASE_PARAMS, **params},
        "swept": sorted(params),
        "devices": {"stages": list(stages), "names": ["cpu"] * len(stages)},
        "git": {"commit": git_commit, "dirty": False},
        "versions": {"python": "3.11.7", "torch": "2.14.1", "cuda": None},
        "slurm": slurm,
        "hostname": "node1",
        "started": "2026-11-27T20:00:00+00:00",
        "finished": "2026-11-27T20:05:00+00:00",
        "data_md5": {},
    }
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def three_epochs(final_acc: float, best=None, loss=0.3, sps=1000.0) -> list[tuple]:
    """Three epochs ending at ``final_acc`` (epoch 2 has ``best`` if given)."""
    mid = best if best is not None else final_acc - 0.05
    return [
        (1, 1.0, 1.1, final_acc - 0.10, 2.0, sps),
        (2, 0.5, 0.6, mid, 3.0, sps + 100),
        (3, loss, loss + 0.1, final_acc, 4.0, sps + 200),
    ]


@pytest.fixture
def three_seeds(tmp_path: Path) -> list[Path]:
    """One configuration, seeds 0..2, final accuracies 0.80, 0.82, 0.84."""
    runs = tmp_path / "runs"
    return [
        write_run(
            runs,
            f"lr=0.001_seed={seed}",
            three_epochs(acc, loss=loss),
            seed=seed,
            slurm={"job_id": f"{100 + seed}", "partition": "debug", "node": "n1"},
        )
        for seed, acc, loss in [(0, 0.80, 0.30), (1, 0.82, 0.20), (2, 0.84, 0.40)]
    ]


def run_cli(*args, env=None, check=False):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        check=check,
    )


# ---------------------------------------------------------------------------
# Student t quantile
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        (1, 12.706204736),
        (2, 4.302652730),
        (4, 2.776445105),
        (9, 2.262157163),
        (30, 2.042272456),
    ],
)
def test_t_quantile_known_values(df, expected):
    assert gather.t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_closed_forms_and_symmetry():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert gather.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        assert gather.t_quantile(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12
        )
        assert gather.t_quantile(1 - p, 7) == pytest.approx(-gather.t_quantile(p, 7), rel=1e-12)
    assert gather.t_quantile(0.5, 3) == 0.0
    # Large df approaches the normal quantile 1.959963985.
    assert gather.t_quantile(0.975, 1e7) == pytest.approx(1.959963985, rel=1e-6)


def test_betainc_identities():
    assert gather.betainc(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-14)
    assert gather.betainc(1, 1, 0.3) == pytest.approx(0.3, rel=1e-13)
    assert gather.betainc(3, 1, 0.7) == pytest.approx(0.7**3, rel=1e-13)
    assert gather.betainc(2, 3, 0.0) == 0.0
    assert gather.betainc(2, 3, 1.0) == 1.0
    with pytest.raises(ValueError):
        gather.t_quantile(1.0, 3)


def test_mean_std_ci95_small_samples():
    assert gather.mean_std_ci95([])[0] == 0
    n, mean, std, low, high = gather.mean_std_ci95([0.5, float("nan")])
    assert (n, mean) == (1, 0.5)
    assert all(math.isnan(v) for v in (std, low, high))


# ---------------------------------------------------------------------------
# Tables from run folders
# ---------------------------------------------------------------------------


def test_summary_three_seeds_exact(three_seeds, tmp_path):
    epochs, runs, summary = gather.gather(three_seeds, tmp_path / "out")
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["n_seeds"] == 3
    half = 4.302652730 * 0.02 / math.sqrt(3)
    assert row["final_test_accuracy_mean"] == pytest.approx(0.82, rel=1e-12)
    assert row["final_test_accuracy_std"] == pytest.approx(0.02, rel=1e-9)
    assert row["final_test_accuracy_ci95_low"] == pytest.approx(0.82 - half, rel=1e-9)
    assert row["final_test_accuracy_ci95_high"] == pytest.approx(0.82 + half, rel=1e-9)
    # train losses 0.3, 0.2, 0.4: mean 0.3, std 0.1; test losses +0.1.
    assert row["final_train_loss_mean"] == pytest.approx(0.3, rel=1e-12)
    assert row["final_train_loss_std"] == pytest.approx(0.1, rel=1e-9)
    assert row["final_test_loss_mean"] == pytest.approx(0.4, rel=1e-12)
    assert row["final_test_loss_ci95_high"] == pytest.approx(
        0.4 + 4.302652730 * 0.1 / math.sqrt(3), rel=1e-9
    )
    # Grouping drops seed but keeps every other parameter.
    assert "seed" not in summary.columns
    assert list(summary.columns[:9]) == [c for c in BASE_PARAMS if c != "seed"] + ["n_seeds"]
    assert row["lr"] == 0.001 and row["hidden_size"] == 200

    # The CSV on disk keeps full precision.
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert on_disk["final_test_accuracy_ci95_low"][0] == pytest.approx(0.82 - half, rel=1e-9)
    assert (
        on_disk["final_test_accuracy_ci95_low"][0] == (summary["final_test_accuracy_ci95_low"][0])
    )


def test_runs_table_values(three_seeds, tmp_path):
    _, runs, _ = gather.gather(three_seeds, tmp_path / "out")
    assert list(runs["run_id"]) == [f"lr=0.001_seed={s}" for s in range(3)]
    assert list(runs.columns) == ["run_id", *BASE_PARAMS, *gather.RUN_METRICS]
    r = runs.iloc[1]
    assert r["final_test_accuracy"] == pytest.approx(0.82, rel=1e-12)
    assert r["best_test_accuracy"] == pytest.approx(0.82, rel=1e-12)
    assert r["best_epoch"] == 3
    assert r["final_train_loss"] == pytest.approx(0.2, rel=1e-12)
    assert r["final_test_loss"] == pytest.approx(0.3, rel=1e-12)
    assert r["total_train_seconds"] == pytest.approx(9.0, rel=1e-12)
    assert r["mean_samples_per_second"] == pytest.approx(1100.0, rel=1e-12)
    assert r["stage_devices"] == "cpu,cpu"
    assert r["device_names"] == "cpu,cpu"
    assert r["git_commit"] == "abc123"
    assert r["slurm_job_id"] == "101"
    assert r["seed"] == 1

    on_disk = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(on_disk.columns) == list(runs.columns)
    assert list(on_disk["best_epoch"]) == [3, 3, 3]
    assert list(on_disk["slurm_job_id"]) == [100, 101, 102]


def test_best_epoch_first_on_ties_and_optional_metadata(tmp_path):
    rows = [
        (1, 1.0, 1.0, 0.70, 1.0, 10.0),
        (2, 0.8, 0.9, 0.90, 1.0, 10.0),
        (3, 0.7, 0.8, 0.85, 1.0, 10.0),
        (4, 0.6, 0.7, 0.90, 1.0, 10.0),
    ]
    folder = write_run(tmp_path, "tie", rows, slurm=None, git_commit=None)
    _, runs, _ = gather.gather([folder], None)
    r = runs.iloc[0]
    assert r["best_epoch"] == 2
    assert r["best_test_accuracy"] == pytest.approx(0.90)
    assert r["final_test_accuracy"] == pytest.approx(0.90)
    assert pd.isna(r["slurm_job_id"])
    assert pd.isna(r["git_commit"])


def test_epochs_table_and_list_params(tmp_path):
    a = write_run(
        tmp_path / "runs",
        "a",
        three_epochs(0.8),
        header=HEADER + ",peak_memory_mb_cuda0",
        devices=["cuda:0", "cuda:1"],
        stages=("cuda:0", "cuda:1"),
    )
    # Add the extra per-epoch column the GPU run reports.
    rows = [",".join(map(str, r)) + f",{100 * r[0]}" for r in three_epochs(0.8)]
    (a / "epochs.csv").write_text("\n".join([HEADER + ",peak_memory_mb_cuda0", *rows]))
    b = write_run(tmp_path / "runs", "b", three_epochs(0.9)[:2], lr=0.01)
    epochs, runs, summary = gather.gather([a, b], tmp_path / "out")

    assert len(epochs) == 5
    assert list(epochs.columns) == [
        "run_id",
        *BASE_PARAMS,
        "epoch",
        *gather.EPOCH_METRICS,
        "peak_memory_mb_cuda0",
    ]
    assert list(epochs["run_id"]) == ["a"] * 3 + ["b"] * 2
    assert list(epochs["epoch"]) == [1, 2, 3, 1, 2]
    assert list(epochs["peak_memory_mb_cuda0"][:3]) == [100, 200, 300]
    assert epochs["peak_memory_mb_cuda0"][3:].isna().all()
    assert list(epochs["devices"]) == ["cuda:0,cuda:1"] * 3 + ["auto"] * 2
    assert list(epochs["lr"]) == [0.001] * 3 + [0.01] * 2
    assert runs["stage_devices"][0] == "cuda:0,cuda:1"
    assert runs["best_epoch"][1] == 2
    # Two configurations (different devices and lr), one seed each.
    assert list(summary["n_seeds"]) == [1, 1]
    assert summary["final_test_accuracy_std"].isna().all()
    assert summary["final_test_accuracy_ci95_low"].isna().all()

    on_disk = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert on_disk.shape == epochs.shape
    assert on_disk["test_accuracy"].tolist() == epochs["test_accuracy"].tolist()


def test_grouping_several_configs(tmp_path):
    runs_dir = tmp_path / "runs"
    paths = []
    finals = {0.001: [0.80, 0.82, 0.84], 0.01: [0.70, 0.74], 0.1: [0.5]}
    for lr, accs in finals.items():
        for seed, acc in enumerate(accs):
            paths.append(
                write_run(runs_dir, f"lr={lr}_s={seed}", three_epochs(acc), lr=lr, seed=seed)
            )
    _, runs, summary = gather.gather(paths, tmp_path / "out")
    assert list(summary["lr"]) == [0.001, 0.01, 0.1]
    assert list(summary["n_seeds"]) == [3, 2, 1]
    assert summary["final_test_accuracy_mean"].tolist() == pytest.approx(
        [0.82, 0.72, 0.5], rel=1e-12
    )
    std2 = math.sqrt(2) * 0.02
    assert summary["final_test_accuracy_std"][1] == pytest.approx(std2, rel=1e-9)
    half2 = 12.706204736 * std2 / math.sqrt(2)
    assert summary["final_test_accuracy_ci95_low"][1] == pytest.approx(0.72 - half2, rel=1e-9)
    assert math.isnan(summary["final_test_accuracy_std"][2])

    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| lr" in md
    assert "82.00 ± 2.00" in md
    assert "72.00 ± 2.83" in md
    assert "| 50.00 " in md  # n=1: no ± part
    assert "Same in all configurations: devices=auto, epochs=3" in md
    assert "hidden_size=200" in md


def test_summary_md_and_tex(three_seeds, tmp_path):
    gather.gather(three_seeds, tmp_path / "out")
    md = (tmp_path / "out" / "summary.md").read_text()
    half = 100 * 4.302652730 * 0.02 / math.sqrt(3)
    lines = md.splitlines()
    assert lines[0].startswith("| devices")
    assert "Test accuracy (%)" in lines[0]
    row = lines[2]
    assert "82.00 ± 2.00" in row
    assert f"[{82 - half:.2f}, {82 + half:.2f}]" in row
    assert "0.3000 ± 0.1000" in row  # train loss
    assert "0.4000 ± 0.1000" in row  # test loss
    assert "| 3 " in row  # n

    tex = (tmp_path / "out" / "summary.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"batch\_size" in tex and r"for\_loop" in tex
    assert r"Test accuracy (\%)" in tex
    assert r"82.00 $\pm$ 2.00" in tex
    body = [line for line in tex.splitlines() if "82.00" in line][0]
    assert body.endswith(r"\\")
    assert body.count("&") == tex.splitlines()[4].count("&")


def test_latex_escape():
    assert gather.latex_escape("a_b & 5% #1 $x$") == r"a\_b \& 5\% \#1 \$x\$"


# ---------------------------------------------------------------------------
# Tutorial logs
# ---------------------------------------------------------------------------

TUTORIAL_LOG = """\
Epoch [1/3], Loss: 0.5234
Some other line
Epoch [2/3], Loss: 0.4123
Epoch [3/3], Loss: 0.39
Training finished.
"""


def test_tutorial_log(tmp_path):
    log = tmp_path / "tutorial_run.log"
    log.write_text(TUTORIAL_LOG)
    epochs, runs, summary = gather.gather([log], tmp_path / "out")
    assert list(epochs["run_id"]) == ["tutorial_run"] * 3
    assert list(epochs["epoch"]) == [1, 2, 3]
    assert epochs["train_loss"].tolist() == [0.5234, 0.4123, 0.39]
    assert epochs["test_accuracy"].isna().all()
    r = runs.iloc[0]
    assert r["run_id"] == "tutorial_run"
    assert r["final_train_loss"] == 0.39
    for col in [
        "final_test_accuracy",
        "best_test_accuracy",
        "best_epoch",
        "final_test_loss",
        "total_train_seconds",
        "mean_samples_per_second",
        "stage_devices",
        "git_commit",
        "slurm_job_id",
    ]:
        assert pd.isna(r[col]), col
    assert len(summary) == 1
    assert summary["n_seeds"][0] == 1
    assert summary["final_train_loss_mean"][0] == 0.39
    assert math.isnan(summary["final_test_accuracy_mean"][0])
    assert (tmp_path / "out" / "summary.md").exists()


def test_tutorial_log_mixed_with_runs(three_seeds, tmp_path):
    log = tmp_path / "tutorial.txt"
    log.write_text(TUTORIAL_LOG)
    epochs, runs, summary = gather.gather([*three_seeds, log], tmp_path / "out")
    assert runs["run_id"].iloc[-1] == "tutorial"
    assert runs.iloc[-1][list(BASE_PARAMS)].isna().all()
    # Integer parameters stay integers although the log has none.
    assert runs["hidden_size"].iloc[0] == 200
    assert str(runs["hidden_size"].dtype) == "Int64"
    assert list(summary["n_seeds"]) == [3, 1]  # NaN parameters form a group
    on_disk = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert on_disk["epochs"].iloc[0] == 3 and pd.isna(on_disk["epochs"].iloc[-1])
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "tutorial log" in md


def test_truncated_number_is_fine(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("Epoch [1/10], Loss: 0.6\nEpoch [2/10], Loss: 0.5\nEpoch [3/10], Loss: 0.")
    frame, skipped = gather.parse_tutorial_log(log)
    assert frame["epoch"] == [1, 2, 3]
    assert frame["train_loss"] == [0.6, 0.5, 0.0]
    assert skipped == []


@pytest.mark.parametrize(
    "bad",
    [
        "Epoch [3/1",
        "Epoch [x/10], Loss: abc",
        "Epoch [3/10], Loss: abc",
        "Epoch [3/10], Loss:",
        "Epoch [3/10] Loss: 0.5",
        "Epoch [3/10], Loss: 0.5 extra",
        "Epoch [11/10], Loss: 0.5",
        "Epochs: 10",
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad):
    log = tmp_path / "bad.log"
    log.write_text(f"Epoch [1/10], Loss: 0.6\nhello\nEpoch [2/10], Loss: 0.5\n{bad}\n")
    with pytest.raises(gather.GatherError, match=rf"{log}:4: malformed"):
        gather.gather([log], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_skip_bad_lines_cli(tmp_path):
    log = tmp_path / "bad.log"
    log.write_text(
        "Epoch [1/10], Loss: 0.6\nEpoch [2/1\nEpoch [2/10], Loss: 0.5\n"
        "Epoch [x/10], Loss: abc\nEpoch [3/10], Loss: 0.4\nTraining finished.\n"
    )
    failed = run_cli("--out", tmp_path / "out", log)
    assert failed.returncode == 1
    assert f"{log}:2: malformed" in failed.stderr
    assert not (tmp_path / "out" / "epochs.csv").exists()

    ok = run_cli("--out", tmp_path / "out", "--skip-bad-lines", log)
    assert ok.returncode == 0, ok.stderr
    assert "skipped 2 malformed line(s)" in ok.stderr
    assert "line 2, 4" in ok.stderr
    epochs = pd.read_csv(tmp_path / "out" / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["train_loss"].tolist() == [0.6, 0.5, 0.4]

    _, skipped = gather.parse_tutorial_log(log, skip_bad_lines=True)
    assert skipped == [2, 4]


def test_epochs_not_increasing(tmp_path):
    log = tmp_path / "dup.log"
    log.write_text("Epoch [1/10], Loss: 0.6\nEpoch [2/10], Loss: 0.5\nEpoch [2/10], Loss: 0.4\n")
    with pytest.raises(gather.GatherError, match=rf"{log}:3: epoch numbers not increasing"):
        gather.gather([log], None, skip_bad_lines=True)

    rows = three_epochs(0.8)
    folder = write_run(tmp_path, "r", [rows[0], rows[2], rows[1]])
    with pytest.raises(gather.GatherError, match=r"epochs\.csv:4: epoch numbers not increasing"):
        gather.gather([folder], None)
    (folder / "epochs.csv").write_text(HEADER + "\n1.5,0.5,0.6,0.7,1,1\n")
    with pytest.raises(gather.GatherError, match=r"epochs\.csv:2: epoch 1.5 is not an integer"):
        gather.gather([folder], None)


def test_log_without_epochs(tmp_path):
    log = tmp_path / "empty.log"
    log.write_text("Training finished.\n")
    with pytest.raises(gather.GatherError, match="no epoch lines"):
        gather.gather([log], None)


# ---------------------------------------------------------------------------
# Broken run folders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["epochs.csv", "run.json"])
def test_missing_file_is_named(tmp_path, missing):
    folder = write_run(tmp_path / "runs", "r", three_epochs(0.8))
    (folder / missing).unlink()
    with pytest.raises(gather.GatherError, match=rf"{folder / missing}: missing"):
        gather.gather([folder], tmp_path / "out")
    result = run_cli("--out", tmp_path / "out", folder)
    assert result.returncode == 1
    assert str(folder / missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_nonexistent_path(tmp_path):
    with pytest.raises(gather.GatherError, match="no such run folder"):
        gather.gather([tmp_path / "nope"], None)


def test_truncated_or_bad_csv(tmp_path):
    folder = write_run(tmp_path, "r", three_epochs(0.8))
    text = (folder / "epochs.csv").read_text()
    (folder / "epochs.csv").write_text(text.rstrip("\n")[:-12])
    with pytest.raises(gather.GatherError, match=r"epochs\.csv:4: expected 6 values"):
        gather.gather([folder], None)
    (folder / "epochs.csv").write_text(HEADER + "\n1,0.5,0.6,oops,1,1\n")
    with pytest.raises(gather.GatherError, match=r"epochs\.csv:2: test_accuracy"):
        gather.gather([folder], None)
    (folder / "epochs.csv").write_text(HEADER + "\n")
    with pytest.raises(gather.GatherError, match="no epochs"):
        gather.gather([folder], None)


def test_duplicate_run_id(tmp_path):
    a = write_run(tmp_path / "a", "same", three_epochs(0.8))
    b = write_run(tmp_path / "b", "same", three_epochs(0.8))
    with pytest.raises(gather.GatherError, match="duplicate run id"):
        gather.gather([a, b], None)


def test_error_keeps_previous_outputs(three_seeds, tmp_path):
    out = tmp_path / "out"
    gather.gather(three_seeds, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (three_seeds[1] / "run.json").unlink()
    with pytest.raises(gather.GatherError):
        gather.gather(three_seeds, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_atomic_write_failure_leaves_old_file(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        gather.write_atomic(target, fail)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["t.csv"]


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--out" in result.stdout and "--skip-bad-lines" in result.stdout


def test_cli_end_to_end(three_seeds, tmp_path):
    log = tmp_path / "tutorial.log"
    log.write_text(TUTORIAL_LOG)
    out = tmp_path / "tables"
    result = run_cli("--out", out, *three_seeds, log)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "epochs.csv",
        "provenance.csv",
        "runs.csv",
        "summary.csv",
        "summary.md",
        "summary.tex",
    ]
    runs = pd.read_csv(out / "runs.csv")
    assert runs["run_id"].tolist() == [p.name for p in three_seeds] + ["tutorial"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["final_test_accuracy_mean"][0] == pytest.approx(0.82, rel=1e-12)
    assert summary["n_seeds"].tolist() == [3, 1]
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 12
    # Provenance only for run folders: a tutorial log carries none.
    provenance = pd.read_csv(out / "provenance.csv")
    assert provenance["run_id"].tolist() == [p.name for p in three_seeds]
    assert np.allclose(
        epochs.loc[epochs["run_id"] == "lr=0.001_seed=2", "test_accuracy"],
        [0.74, 0.79, 0.84],
    )


def test_gather_does_not_import_torch(three_seeds, tmp_path):
    # Importing the module leaves torch out of sys.modules ...
    code = (
        f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gather\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
    # ... and the CLI works where importing torch would fail.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('gather.py must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = run_cli("--out", tmp_path / "out", *three_seeds, env=env)
    assert result.returncode == 0, result.stderr
