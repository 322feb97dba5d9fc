"""Memory scales with the stage, not the model: each stage process of a two-stage run needs
well under the memory of the single process training the same model (run.json's
peak_rss_mb, the kernel's peak resident set of each process).

What a model adds to a process is measured against the same engine with a tiny model (torch
itself, the data and the process group: about 0.7 GB here). Two equal layers of 12.8 M
weights (103 MB, 411 MB with gradients and Adam): the single process adds ~520 MB, each
stage process ~300 MB, about half plus Adam's temporaries for its largest layer.
workflow/scripts/bench/memory_benchmark.py gives the exact ratios for 2 and 3 stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Run, cli

pytestmark = pytest.mark.distributed

LARGE = [16384, 784]  # 784 -> 16384 -> 784 -> 10: two stages of 12.8 M weights each
TINY = [10]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """200 training rows: two steps an epoch, so that the model, not the data, is measured."""
    from fmnist.data import synthetic

    folder = tmp_path_factory.mktemp("small_data")
    synthetic.write_synthetic(folder, train_size=200, test_size=100, seed=0)
    return folder


def peaks(data: Path, out: Path, hidden: list[int], **options) -> list[float]:
    Run(out, cli(data, out, hidden_sizes=hidden, epochs=1, **options)).ok()
    (attempt,) = json.loads((out / "run.json").read_text())["attempts"]
    return attempt["peak_rss_mb"]


def test_each_stage_process_needs_about_half_of_the_single_process(small_data, tmp_path):
    (single_base,) = peaks(small_data, tmp_path / "single_tiny", TINY)
    (single,) = peaks(small_data, tmp_path / "single", LARGE)
    stages_base = peaks(small_data, tmp_path / "stages_tiny", TINY, engine="distributed")
    stages = peaks(small_data, tmp_path / "stages", LARGE, engine="distributed")
    model_in_single = single - single_base
    assert model_in_single > 411  # the weights, their gradients and Adam's two moments
    for rank, (peak, base) in enumerate(zip(stages, stages_base)):
        assert peak - base < 0.75 * model_in_single, (rank, stages, single, single_base)
