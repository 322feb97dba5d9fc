"""tests/gpu/check_cuda.py, the GPU check, on the CPU: what it says where there is no GPU,
that one failing check does not stop the others, and a rehearsal of its quick checks with
the CPU in place of two GPUs (its plumbing: run folders, comparisons, the stop at a fixed
batch, the timeline drawn, results.json), so that the one prepared run on a GPU machine is
not lost to a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

CHECK = REPO_ROOT / "tests/gpu/check_cuda.py"
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def run_check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(CHECK), *args]
    return subprocess.run(command, capture_output=True, text=True, env=NO_GPU, timeout=600)


@pytest.fixture(scope="module")
def check_cuda():
    return _load()


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_cuda", CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_cuda"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_help_lists_every_check(check_cuda):
    done = run_check("--help")
    assert done.returncode == 0
    for item in check_cuda.CHECKS:
        assert f"  {item.name} " in done.stdout
    assert "[quick]" in done.stdout


def test_without_a_gpu_it_says_so_and_exits_2_without_a_traceback(tmp_path):
    done = run_check("--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("no GPU visible (torch.cuda.device_count() = 0")
    assert "Traceback" not in done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["error"] == "no GPU visible: nothing was run" and results["checks"] == {}


def test_an_unknown_check_is_named(tmp_path):
    done = run_check("--out", str(tmp_path), "--only", "resume", "nonsense")
    assert done.returncode == 2 and "unknown check(s) ['nonsense']" in done.stderr


def test_a_failing_check_is_recorded_and_the_others_still_run(check_cuda, tmp_path):
    def broken(ctx, figures):
        figures["before"] = 1
        raise ZeroDivisionError("a bug in a check")

    def failing(ctx, figures):
        check_cuda.expect(False, "the GPU gave other bits")

    def passing(ctx, figures):
        figures["answer"] = 42

    checks = [
        check_cuda.Check("broken", broken, "b", True, lambda ctx: None),
        check_cuda.Check("failing", failing, "f", True, lambda ctx: None),
        check_cuda.Check("skipped", passing, "s", True, lambda ctx: "needs 2 GPUs"),
        check_cuda.Check("passing", passing, "p", True, lambda ctx: None),
    ]
    results = {"checks": {}, "failures": []}
    path = tmp_path / "results.json"
    failures = check_cuda.run_checks(None, checks, path, results)
    assert failures == ["broken", "failing"]
    written = json.loads(path.read_text())
    verdicts = {name: entry["verdict"] for name, entry in written["checks"].items()}
    assert verdicts == {
        "broken": "failed",
        "failing": "failed",
        "skipped": "skipped",
        "passing": "passed",
    }
    assert written["checks"]["broken"]["figures"] == {"before": 1}
    assert "ZeroDivisionError" in written["checks"]["broken"]["traceback"]
    assert written["checks"]["failing"]["error"] == "CheckFailed: the GPU gave other bits"
    assert written["checks"]["skipped"]["error"] == "needs 2 GPUs"
    assert written["checks"]["passing"]["figures"] == {"answer": 42}


@pytest.mark.distributed
def test_a_rehearsal_of_the_checks_passes_on_the_cpu(tmp_path):
    """A layout, the stop at a fixed batch and the distributed engine, as the GPU check runs
    them for two GPUs, with the CPU standing in (the other layouts differ only in names)."""
    chosen = ["cuda0+cpu_m4", "resume", "distributed_gpipe", "distributed_one_gpu_refused"]
    args = ["--out", str(tmp_path), "--train-size", "2000", "--epochs", "2", "--only", *chosen]
    assert run_check(*args).returncode == 2  # no GPU, and no rehearsal asked for
    done = run_check(*args, "--rehearse-on-cpu", "2")
    results = json.loads((tmp_path / "results.json").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = {name: entry["verdict"] for name, entry in results["checks"].items()}
    assert verdicts == {
        "cuda0+cpu_m4": "passed",
        "resume": "passed",
        "distributed_one_gpu_refused": "skipped",
        "distributed_gpipe": "passed",
    }
    assert results["checks"]["resume"]["figures"]["stopped_at"] == {"epoch": 2, "batch": 11}
    assert results["checks"]["distributed_gpipe"]["figures"]["bitwise_single_process"]
    assert (tmp_path / "work/cuda0+cpu_m4_a/timeline.png").stat().st_size > 0
