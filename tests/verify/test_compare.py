"""fmnist/verify/compare.py and fmnist/verify/plan.py: a run against its rerun, byte for byte, and
which runs `snakemake verify` reruns with which options (the workflow: test_verify_workflow.py)."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
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
    assert (row["verdict"], row["identical"], row["passed"]) == (
        "reproduced (bit-identical)",
        "yes",
        "yes",
    )
    assert row["epochs_compared"] == 2
    assert row["train_loss_max_abs_diff"] == 0.0 and row["weights_max_abs_diff"] == 0.0
    assert row["provenance_differences"] == "" and row["differing"] == ""


def test_times_are_not_compared(tmp_path):
    slower = [(*r[:4], r[4] * 2, r[5] / 2) for r in ROWS]
    row = verify.compare_run(run_folder(tmp_path, "a"), run_folder(tmp_path, "b", slower))
    assert row["verdict"] == "reproduced (bit-identical)"
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
    assert (row["verdict"], row["passed"]) == ("reproduced (bit-identical)", "yes")
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


def test_a_changed_thread_count_within_rounding_is_reproduced_within_tolerance(tmp_path):
    rerun = run_folder(tmp_path, "b", one_ulp_up(ROWS, 1, 2), setup={"threads": 2})
    row = verify.compare_run(run_folder(tmp_path, "a"), rerun)
    assert (row["verdict"], row["passed"]) == (
        "reproduced within tolerance (threads differ)",
        "yes",
    )
    assert row["provenance_differences"] == "threads: 1 → 2"
    assert row["beyond_tolerance"] == ""


def test_the_same_bits_with_another_thread_count_are_reproduced(tmp_path):
    row = verify.compare_run(
        run_folder(tmp_path, "a"), run_folder(tmp_path, "b", setup={"threads": 4})
    )
    assert row["verdict"] == "reproduced (bit-identical)"
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
    assert row["verdict"] == "reproduced within tolerance (device names, torch, cuda differ)"
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
    assert verify.verdict(False, names, []) == (
        "reproduced within tolerance (CPU capability differ)"
    )


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
    assert [r["verdict"] for r in rows] == ["reproduced (bit-identical)", "not reproduced"]
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
    assert "1 run(s) not confirmed: base" in failed.stderr
    run_cli("compare", "--pair", a, a, "--out-dir", out)
    passed = run_cli("check", out / "reproduction.csv", env=env)
    assert passed.returncode == 0 and "Verification passed" in passed.stdout


def test_cli_missing_model_is_an_error(tmp_path):
    a = run_folder(tmp_path, "a")
    b = write_run_folder(tmp_path / "b", "base", ROWS, PARAMS)
    done = run_cli("compare", "--pair", a, b, "--out-dir", tmp_path / "out")
    assert done.returncode == 1 and "model.pt (the rerun): missing" in done.stderr


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


def test_a_record_from_before_stages_per_process_is_read_with_one(tmp_path, monkeypatch):
    """A setting added later (settings.ADDED_LATER) takes the value every earlier run had."""
    monkeypatch.chdir(tmp_path)
    old = {k: v for k, v in PARAMS.items() if k != "stages_per_process"}
    write_run_folder(tmp_path / "old", "r", ROWS, old)
    assert "--stages-per-process 1" in plan(source="old").options("r")


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
            "verdict": [
                "reproduced (bit-identical)",
                "reproduced within tolerance (threads differ)",
            ],
            "passed": ["yes", "yes"],
        }
    )
    assert verify.summary_sentence(table) == (
        "Verification passed: 1 of 2 run(s) (a) re-run from scratch gave bit-identical metrics "
        "and weights; 1 of 2 within rounding tolerance under other conditions (b: reproduced "
        "within tolerance (threads differ))."
    )
    table.loc[1, ["verdict", "passed"]] = ["not reproduced", "no"]
    assert verify.summary_sentence(table).startswith("Verification FAILED: 1 of 2")
    assert "color:#b00020" in verify.verdict_rst(table)


# --------------------------------------------------------------------------- what may pass

DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


def with_cells(rows, epoch: int, column: int, value):
    rows = [list(r) for r in rows]
    rows[epoch - 1][column] = value
    return rows


def folder_with(root: Path, name: str, rows=ROWS, params=PARAMS, git=None, **record) -> Path:
    """A run folder whose run.json records ``git`` (the code digest) and ``record``."""
    git = git or {"commit": "abc123", "dirty": False, "code_digest": DIGEST_A}
    folder = write_run_folder(root / name, "base", rows, params, git=git, **record)
    torch.save(weights(), folder / runfiles.MODEL_FILE)
    return folder


def test_an_edited_accuracy_under_other_threads_is_unverifiable_not_reproduced(tmp_path):
    """The issue's case: an original accuracy edited 0.8105 -> 0.9105, and the rerun had
    another thread count: rounding cannot explain 10 points, so it does not pass."""
    original = folder_with(tmp_path, "a", with_cells(ROWS, 2, 3, 0.9105), setup={"threads": 2})
    rerun = folder_with(tmp_path, "b", with_cells(ROWS, 2, 3, 0.8105))
    row = verify.compare_run(original, rerun)
    assert row["verdict"] == "unverifiable here: threads differ, numbers beyond rounding"
    assert row["passed"] == "no"
    assert row["beyond_tolerance"] == "test_accuracy by 0.1"
    accepted = verify.compare_run(original, rerun, accept_unverifiable=True)
    assert accepted["passed"] == "accepted"
    table = pd.DataFrame([accepted])
    assert verify.summary_sentence(table).startswith("Verification accepted, not all verified")
    assert "NOT verified" in verify.summary_sentence(table)
    assert "color:#b00020" in verify.verdict_rst(table)  # never shown as a plain pass


def test_a_dirty_tree_is_not_other_code(tmp_path):
    """An edited config.yaml makes the tree dirty but shapes no number: with the same code
    digest an edited accuracy is simply not reproduced."""
    dirty = {"commit": "abc123", "dirty": True, "code_digest": DIGEST_A}
    original = folder_with(tmp_path, "a", with_cells(ROWS, 2, 3, 0.9105), git=dirty)
    row = verify.compare_run(original, folder_with(tmp_path, "b", with_cells(ROWS, 2, 3, 0.8105)))
    assert (row["verdict"], row["passed"]) == ("not reproduced", "no")
    assert row["provenance_differences"] == ""


def test_other_code_is_unverifiable_however_small_the_difference(tmp_path):
    other = {"commit": "def456", "dirty": False, "code_digest": DIGEST_B}
    original = folder_with(tmp_path, "a", git=other)
    rerun = folder_with(tmp_path, "b", one_ulp_up(ROWS, 1, 1))
    row = verify.compare_run(original, rerun)
    assert (row["verdict"], row["passed"]) == ("unverifiable here: code differ", "no")
    assert row["provenance_differences"] == "code: bbbbbbbbbbbb → aaaaaaaaaaaa"
    # The same code under another commit: the same code (the digest decides).
    moved = {"commit": "def456", "dirty": True, "code_digest": DIGEST_A}
    same = verify.compare_run(folder_with(tmp_path, "c", git=moved), rerun)
    assert same["verdict"] == "not reproduced"


@pytest.mark.parametrize(
    ("relative", "verdict"),
    [
        (0.5e-5, "reproduced within tolerance (threads differ)"),
        (2e-5, "unverifiable here: threads differ, numbers beyond rounding"),
    ],
)
def test_the_tolerance_is_rounding_level(tmp_path, relative, verdict):
    """Losses within TOLERANCE (1e-5 relative) of the original's pass under other
    threads; twice that does not."""
    assert verify.TOLERANCE == {"relative": 1e-5, "test_accuracy": 1e-3}
    loss = ROWS[1][1]
    original = folder_with(tmp_path, "a", setup={"threads": 2})
    rerun = folder_with(tmp_path, "b", with_cells(ROWS, 2, 1, repr(loss * (1 + relative))))
    row = verify.compare_run(original, rerun)
    assert row["verdict"] == verdict
    assert row["train_loss_max_rel_diff"] == pytest.approx(relative, rel=1e-4)


@pytest.mark.parametrize(("change", "passes"), [(0.0009, True), (0.0011, False)])
def test_the_accuracy_tolerance_is_a_few_predictions(tmp_path, change, passes):
    original = folder_with(tmp_path, "a", setup={"threads": 2})
    rerun = folder_with(tmp_path, "b", with_cells(ROWS, 2, 3, repr(ROWS[1][3] + change)))
    assert (verify.compare_run(original, rerun)["passed"] == "yes") is passes


def test_weights_are_within_tolerance_relative_to_their_tensor(tmp_path):
    """The tensor's smallest weight moved by 1e-7 of its largest passes under other
    threads (rounding of its neighbours' size); moved by 1e-4 of it, it does not."""
    original = folder_with(tmp_path, "a", setup={"threads": 2})
    for name, change, verdict in [
        ("near", 1e-7, "reproduced within tolerance (threads differ)"),
        ("far", 1e-4, "unverifiable here: threads differ, numbers beyond rounding"),
    ]:
        state = weights()
        tensor = state["stage2.weight"].view(-1)
        smallest = int(tensor.abs().argmin())  # element by element it moves far more
        tensor[smallest] += change * float(tensor.abs().max())
        rerun = folder_with(tmp_path, name)
        torch.save(state, rerun / runfiles.MODEL_FILE)
        row = verify.compare_run(original, rerun)
        assert row["verdict"] == verdict, name


def test_missing_epochs_never_pass(tmp_path):
    """A colleague's copy holding 1 of the 2 epochs its run.json promises fails, under
    other threads and even when unverifiable runs are accepted."""
    original = folder_with(tmp_path, "a", ROWS[:1], setup={"threads": 2})
    row = verify.compare_run(original, folder_with(tmp_path, "b"), accept_unverifiable=True)
    assert row["verdict"] == (
        "incomplete: the original holds epochs 1..1 (1 rows) of the 2 its run.json promises"
    )
    assert row["passed"] == "no"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "cannot read it as a model.pt"),
        ("truncated", "cannot read it as a model.pt"),
        (b"not a checkpoint at all\n", "cannot read it as a model.pt"),
        ("foreign", "not a model.pt: expected a state dict of tensors, got list"),
    ],
)
def test_an_unreadable_model_is_named_with_its_side(tmp_path, content, says):
    a, b = run_folder(tmp_path, "a"), run_folder(tmp_path, "b")
    model = b / runfiles.MODEL_FILE
    if content == "truncated":
        model.write_bytes(model.read_bytes()[:100])
    elif content == "foreign":
        torch.save([1, 2, 3], model)
    else:
        model.write_bytes(content)
    with pytest.raises(runfiles.RunFileError) as caught:
        verify.compare_run(a, b)
    assert str(caught.value).startswith(f"{model} (the rerun): {says}")
    done = run_cli("compare", "--pair", b, a, "--out-dir", tmp_path / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"verify.py: error: {model} (the original): {says}" in done.stderr


def test_cli_accept_unverifiable(tmp_path):
    original = folder_with(tmp_path, "a", with_cells(ROWS, 2, 3, 0.9105), setup={"threads": 2})
    rerun = folder_with(tmp_path, "b", with_cells(ROWS, 2, 3, 0.8105))
    out = tmp_path / "out"
    run_cli("compare", "--pair", original, rerun, "--out-dir", out)
    failed = run_cli("check", out / "reproduction.csv")
    assert failed.returncode == 1 and "1 run(s) not confirmed: base" in failed.stderr
    run_cli("compare", "--pair", original, rerun, "--out-dir", out, "--accept-unverifiable")
    accepted = run_cli("check", out / "reproduction.csv")
    assert accepted.returncode == 0, accepted.stderr
    assert "Verification accepted, not all verified" in accepted.stdout


# --------------------------------------------------------------------------- the plan's inputs


@pytest.mark.parametrize("name", ["r$(touch PWNED2)", "x;touch PWNED;y", "-rf", ".hidden"])
def test_a_source_folder_that_is_not_a_run_id_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    write_run_folder(tmp_path / "their", "base", ROWS, PARAMS)
    os.rename(tmp_path / "their/base", tmp_path / "their" / name)
    with pytest.raises(PlanError, match=rf"run folder {re.escape(repr(name))} is not a run id"):
        plan("all", "their").runs()


def test_a_verify_runs_entry_that_is_not_a_run_id_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError, match=r"verify.runs: '\.\./x': not letters"):
        plan(["../x"]).runs()


def test_a_symbolic_link_to_the_workflows_results_is_refused(tmp_path, monkeypatch):
    """A source that is a link to results/verify would compare each rerun with itself."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/verify/base").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "results/verify")
    with pytest.raises(PlanError, match="verify.source link: overlaps results/verify"):
        plan(source="link").runs()


def test_a_run_folder_linking_out_of_the_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = write_run_folder(tmp_path / "results/verify", "base", ROWS, PARAMS)
    (tmp_path / "their").mkdir()
    (tmp_path / "their/base").symlink_to(elsewhere)
    with pytest.raises(PlanError, match=r"their/base is a symbolic link to .*results/verify/base"):
        plan("all", "their").runs()
    (tmp_path / "their/base").unlink()
    copy = write_run_folder(tmp_path / "their", "base", ROWS, PARAMS)
    (copy / runfiles.EPOCHS_FILE).unlink()
    (copy / runfiles.EPOCHS_FILE).symlink_to(elsewhere / runfiles.EPOCHS_FILE)
    with pytest.raises(PlanError, match="epochs.csv is a symbolic link"):
        plan("all", "their").runs()


def test_a_run_id_in_run_json_that_is_a_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_run_folder(tmp_path / "their", "base", ROWS, PARAMS)
    record = json.loads((folder / "run.json").read_text())
    record["run_id"] = "../../../OVERWRITE"
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(PlanError, match=r"run.json: key run_id: '\.\./\.\./\.\./OVERWRITE'"):
        plan("all", "their").options("base")
