"""Tests of workflow/scripts/benchmark_memory.py: real train.py runs, their peaks read back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ENV, SCRIPTS_DIR

pytestmark = pytest.mark.distributed


def test_the_memory_benchmark_measures_each_process(tmp_path):
    out = tmp_path / "memory.json"
    command = [sys.executable, str(SCRIPTS_DIR / "benchmark_memory.py"), "--out", str(out)]
    command += ["--models", "256+64:2", "--limit-model", "none", "--train-size", "100"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (found,) = json.loads(out.read_text())["scaling"]
    peaks = found["peak_rss_mb"]
    assert [len(peaks[k]) for k in ("single_tiny", "single", "stages_tiny", "stages")] == [
        1,
        1,
        2,
        2,
    ]
    assert all(mb > 100 for values in peaks.values() for mb in values)  # torch alone is more
    assert found["model_mb_single"] == peaks["single"][0] - peaks["single_tiny"][0]
    assert found["expected"]["split"] == [1, 2]
    assert found["expected"]["whole"]["state_mb"] == pytest.approx(
        16 * (785 * 256 + 257 * 64 + 65 * 10) / 2**20
    )
