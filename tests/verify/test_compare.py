"""fmnist/verify/compare.py and fmnist/verify/plan.py: a run against its rerun, byte for byte, and
which runs `snakemake verify` reruns with which options (the workflow: test_verify_workflow.py)."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
from fmnist.config import settings
from fmnist.rundir import runfiles
from fmnist.verify import compare as verify
from fmnist.verify.plan import PlanError, VerifyPlan
from helpers import DEFAULT_SETTINGS, HEADER, SCRIPTS_DIR, run_script, write_run_folder

ROWS = [
    (1, 0.8123456789012345, 0.7, 0.71, 1.5, 1333.3),
    (2, 0.5123456789012345, 0.6, 0.76, 1.4, 1428.6),
]
PARAMS = {**DEFAULT_SETTINGS, "devices": ["cpu", "cpu"], "epochs": 2}


def weights() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "stage1.weight": torch.randn(4, 3, generator=generator),
        "stage1.bias": torch.zeros(4),
        "stage2.weight": torch.randn(2, 4, generator=generator),
    }


def run_folder(
    root: Path, name: str, rows=ROWS, state=None, setup=None, attempts=None, header=HEADER
) -> Path:
    folder = write_run_folder(
        root / name, "base", rows, PARAMS, header=header, setup=setup, attempts=attempts
    )
    torch.save(state or weights(), folder / runfiles.MODEL_FILE)
    return folder


def one_ulp_up(rows, epoch: int, column: int):
    rows = [list(r) for r in rows]
    rows[epoch - 1][column] = repr(math.nextafter(float(rows[epoch - 1][column]), math.inf))
    return rows


def test_an_unchanged_run_is_reproduced(tmp_path):
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b"))
    assert (row["verdict"], row["identical"], row["passed"]) == ("reproduced", "yes", "yes")
    assert row["epochs_compared"] == 2
    assert row["train_loss_max_abs_diff"] == 0.0 and row["weights_max_abs_diff"] == 0.0
    assert row["provenance_differences"] == "" and row["differing"] == ""


def test_times_are_not_compared(tmp_path):
    slower = [(*r[:4], r[4] * 2, r[5] / 2) for r in ROWS]
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b", slower))
    assert row["verdict"] == "reproduced"
    assert not any(key.startswith(("epoch_seconds", "samples_per")) for key in row)


@pytest.mark.parametrize("column", ["peak_memory_mb_cuda0", "peak_memory_mb_stage1"])
def test_peak_memory_is_a_measurement_not_compared(tmp_path, column):
    """Both engines' peak memory columns (single process: per GPU; distributed: per stage
    process) differ between identical GPU runs; only the numbers must repeat."""
    rows_a = [(*r, 100.0 + r[0]) for r in ROWS]
    rows_b = [(*r, 200.0 + r[0]) for r in ROWS]
    a = run_folder(tmp_path, "a", rows_a, header=f"{HEADER},{column}")
    b = run_folder(tmp_path, "b", rows_b, header=f"{HEADER},{column}")
    row = verify.compare_run(a, b)
    assert (row["verdict"], row["passed"]) == ("reproduced", "yes")
    assert not any(key.startswith("peak_memory") for key in row)
    assert verify.metric_columns([*HEADER.split(","), column]) == HEADER.split(",")[:4]


def test_a_metric_one_ulp_off_is_not_reproduced(tmp_path):
    rerun = run_folder(tmp_path, "b", one_ulp_up(ROWS, 2, 1))
    row = verify.compare_run(run_folder(tmp_path, "a"), rerun)
    assert (row["verdict"], row["identical"], row["passed"]) == ("not reproduced", "no", "no")
    assert row["differing"] == "train_loss"
    ulp = math.ulp(ROWS[1][1])
    assert row["train_loss_max_abs_diff"] == ulp
    assert row["train_loss_max_rel_diff"] == pytest.approx(ulp / ROWS[1][1])
    assert row["test_loss_max_abs_diff"] == 0.0


def test_altered_weights_are_not_reproduced(tmp_path):
    state = weights()
    w = state["stage2.weight"]
    w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(math.inf))  # one float32 ulp
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b", state=state))
    assert row["verdict"] == "not reproduced"
    assert row["differing"] == "stage2.weight"
    assert 0 < row["weights_max_abs_diff"] < 1e-6
    assert row["train_loss_max_abs_diff"] == 0.0


def test_weights_compare_bytes_not_values(tmp_path):
    state = weights()
    state["stage1.bias"][0] = -0.0  # equal to 0.0, other bits
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b", state=state))
    assert row["verdict"] == "not reproduced" and row["weights_max_abs_diff"] == 0.0


def test_a_missing_tensor_is_named(tmp_path):
    state = weights()
    del state["stage1.bias"]
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b", state=state))
    assert row["identical"] == "no"
    assert "tensor stage1.bias only in the original" in row["notes"]


def test_a_changed_thread_count_is_expected_to_differ(tmp_path):
    rerun = run_folder(tmp_path, "b", one_ulp_up(ROWS, 1, 2), setup={"threads": 2})
    row = verify.compare_run(run_folder(tmp_path, "a"), rerun)
    assert (row["verdict"], row["passed"]) == ("expected to differ: threads", "yes")
    assert row["provenance_differences"] == "threads: 1 → 2"


def test_the_same_bits_with_another_thread_count_are_reproduced(tmp_path):
    row = verify.compare_run(
        run_folder(tmp_path, "a"), run_folder(tmp_path, "b", setup={"threads": 4})
    )
    assert row["verdict"] == "reproduced"
    assert row["provenance_differences"] == "threads: 1 → 4"


def test_another_host_does_not_explain_other_bits(tmp_path):
    rerun = run_folder(tmp_path, "b", one_ulp_up(ROWS, 1, 1), attempts=[{"hostname": "node9"}])
    row = verify.compare_run(run_folder(tmp_path, "a"), rerun)
    assert row["verdict"] == "not reproduced"
    assert row["provenance_differences"] == "host: node1 → node9"


def test_other_versions_and_devices_explain(tmp_path):
    versions = {"python": "3.11.7", "torch": "2.15.0", "cuda": "12.4"}
    versions = {**dict.fromkeys(["torchvision", "snakemake", "numpy", "cudnn"]), **versions}
    attempts = [{"versions": versions, "device_names": ["NVIDIA H100", "NVIDIA H100"]}]
    rerun = run_folder(tmp_path, "b", one_ulp_up(ROWS, 1, 1), attempts=attempts)
    row = verify.compare_run(run_folder(tmp_path, "a"), rerun)
    assert row["verdict"] == "expected to differ: device names, torch, cuda"
    assert "torch: 2.14.1 → 2.15.0" in row["provenance_differences"]


def test_other_settings_are_not_comparable(tmp_path):
    a = run_folder(tmp_path, "a")
    b = run_folder(tmp_path, "b", one_ulp_up(ROWS, 1, 1))
    record = json.loads((b / "run.json").read_text())
    record["params"]["lr"] = 0.001
    (b / "run.json").write_text(json.dumps(record))
    row = verify.compare_run(a, b)
    assert (row["verdict"], row["passed"]) == ("not comparable: settings differ", "no")
    assert "settings: lr 0.01 → 0.001" in row["provenance_differences"]


def test_cpu_capability_counts_only_where_both_runs_recorded_it():
    record = write_record_dict()
    other = copy.deepcopy(record)
    other["attempts"][-1]["cpu_capability"] = "AVX512"  # format 2 has none: unknown, not other
    assert verify.provenance_differences(record, other) == ([], [])
    record["attempts"][-1]["cpu_capability"] = "AVX2"
    names, words = verify.provenance_differences(record, other)
    assert names == ["CPU capability"] and words == ["CPU capability: AVX2 → AVX512"]
    assert verify.verdict(False, names) == "expected to differ: CPU capability"


def write_record_dict() -> dict:
    from helpers import make_record

    return make_record("base", PARAMS)


def test_fewer_epochs_are_named(tmp_path):
    longer = write_run_folder(
        tmp_path / "b", "base", [*ROWS, (3, 0.4, 0.5, 0.8, 1, 1)], {**PARAMS, "epochs": 3}
    )
    torch.save(weights(), longer / runfiles.MODEL_FILE)
    a, b = runfiles.read_epochs(run_folder(tmp_path, "a") / "epochs.csv"), None
    b = runfiles.read_epochs(longer / "epochs.csv")
    result, common = verify.compare_metrics(a, b)
    assert not result.identical and common == 2 and result.notes == ["epochs: 2 vs 3"]


# --------------------------------------------------------------------------- the command line


def run_cli(*args, env=None):
    return run_script(SCRIPTS_DIR / "verify.py", *args, env=env)


def test_cli_compare_then_check(tmp_path):
    a, b = run_folder(tmp_path, "a"), run_folder(tmp_path, "b", one_ulp_up(ROWS, 2, 3))
    out = tmp_path / "verify"
    done = run_cli("compare", "--pair", a, a, "--pair", a, b, "--out-dir", out)
    assert done.returncode == 0, done.stderr  # the table is the result, whatever it says
    rows = list(csv.DictReader((out / "reproduction.csv").open()))
    assert [r["verdict"] for r in rows] == ["reproduced", "not reproduced"]
    assert "color:#b00020" in (out / "verdict.rst").read_text()
    page = (out / "reproduction.html").read_text()
    assert 'class="banner fail"' in page and '<tr class="fail">' in page
    # check imports no torch.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('check must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    failed = run_cli("check", out / "reproduction.csv", env=env)
    assert failed.returncode == 1, failed.stderr
    assert "base: not reproduced" in failed.stdout
    assert "1 run(s) not reproduced: base" in failed.stderr
    run_cli("compare", "--pair", a, a, "--out-dir", out)
    passed = run_cli("check", out / "reproduction.csv", env=env)
    assert passed.returncode == 0 and "Verification passed" in passed.stdout


def test_cli_missing_model_is_an_error(tmp_path):
    a = run_folder(tmp_path, "a")
    b = write_run_folder(tmp_path / "b", "base", ROWS, PARAMS)
    done = run_cli("compare", "--pair", a, b, "--out-dir", tmp_path / "out")
    assert done.returncode == 1 and "model.pt: missing" in done.stderr


# --------------------------------------------------------------------------- the plan

RUNS = {"lr=0.01_seed=0": {**PARAMS, "lr": 0.01}, "lr=0.1_seed=0": {**PARAMS, "lr": 0.1}}


def plan(runs="first", source="results/runs") -> VerifyPlan:
    return VerifyPlan(runs, source, RUNS, ["lr", "seed"])


def test_which_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert plan().runs() == ["lr=0.01_seed=0"]
    assert plan("all").runs() == list(RUNS)
    assert plan(["lr=0.1_seed=0"]).runs() == ["lr=0.1_seed=0"]
    with pytest.raises(PlanError, match=r"no run 'nope' in results/runs \(there: lr=0.01"):
        plan(["nope"]).runs()


def test_the_options_are_the_training_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = shlex.split(plan().options("lr=0.01_seed=0"))
    assert words == [
        *settings.command_line(RUNS["lr=0.01_seed=0"]),
        "--run-id",
        "lr=0.01_seed=0",
        "--swept",
        "lr",
        "seed",
    ]


def test_a_colleagues_runs_are_rerun_with_their_recorded_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    theirs = {**PARAMS, "lr": 0.05, "hidden_sizes": [64]}
    for name in ("x", "y"):
        folder = write_run_folder(
            tmp_path / "their/runs", name, ROWS, theirs, swept=["hidden_sizes"]
        )
        torch.save(weights(), folder / runfiles.MODEL_FILE)
    other = plan("all", "their/runs")
    assert other.runs() == ["x", "y"]
    words = shlex.split(other.options("y"))
    assert words[words.index("--lr") + 1] == "0.05" and words[-3:] == [
        "y",
        "--swept",
        "hidden_sizes",
    ]
    assert other.original_files()[:3] == [
        f"their/runs/x/{n}" for n in ("epochs.csv", "run.json", "model.pt")
    ]
    assert "--pair their/runs/x results/verify/x" in other.pairs()
    (tmp_path / "their/runs/y/model.pt").unlink()
    with pytest.raises(PlanError, match="missing their/runs/y/model.pt"):
        other.original_files()


def test_a_source_the_workflow_writes_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("results/runs/old", "results/verify", "results"):
        with pytest.raises(PlanError, match="overlaps"):
            plan(source=source).runs()
    with pytest.raises(PlanError, match="no such folder"):
        plan(source="nowhere").runs()


def test_settings_of_another_version_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = {k: v for k, v in PARAMS.items() if k != "cpu_step"}
    write_run_folder(tmp_path / "old", "r", ROWS, old)
    with pytest.raises(PlanError, match="missing: cpu_step"):
        plan(source="old").options("r")


def test_the_default_target_keeps_a_verification_once_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert plan().kept_up_to_date(["a"]) == []
    (tmp_path / "results/verify").mkdir(parents=True)
    (tmp_path / "results/verify/reproduction.csv").write_text("run\n")
    assert plan().kept_up_to_date(["a"]) == ["a"]


def test_the_sentence_says_which_runs_were_exact_and_which_differ_as_expected():
    table = pd.DataFrame(
        {
            "run": ["a", "b"],
            "identical": ["yes", "no"],
            "verdict": ["reproduced", "expected to differ: threads"],
            "passed": ["yes", "yes"],
        }
    )
    assert verify.summary_sentence(table) == (
        "Verification passed: 1 of 2 run(s) (a) re-run from scratch gave bit-identical metrics "
        "and weights; 1 of 2 differ as expected (b: expected to differ: threads)."
    )
    table.loc[1, ["verdict", "passed"]] = ["not reproduced", "no"]
    assert verify.summary_sentence(table).startswith("Verification FAILED: 1 of 2")
    assert "color:#b00020" in verify.verdict_rst(table)
