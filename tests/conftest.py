"""The tests' fixtures: a small synthetic dataset, torch's process-wide state put back, the
test SLURM cluster, and one finished local workflow that the end-to-end tests share.

Helpers that are not fixtures are in helpers.py. Markers (pyproject.toml) say what a test
needs: ``slurm`` (the test cluster), ``distributed`` (real process groups), ``workflow``
(a whole Snakemake run).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any folder
from helpers import (  # noqa: E402
    cluster_bin,
    copy_workflow,
    run_snakemake,
    start_slurm_cluster,
)

# The workflow every end-to-end test reads (finished_workflow): a sweep of two learning rates
# and two seeds on SYNTHETIC data, two of its runs verified, the report built.
SHARED_SWEEP = {"lr": [0.01, 0.003], "seed": [0, 1]}
SHARED_RUNS = ["lr=0.003_seed=0", "lr=0.003_seed=1", "lr=0.01_seed=0", "lr=0.01_seed=1"]
SHARED_VERIFIED = ["lr=0.01_seed=0", "lr=0.01_seed=1"]
SHARED_OVERLAY = {
    "data": {
        "dir": "resources/synthetic",
        "synthetic": {"train_size": 2000, "test_size": 500, "seed": 0},
    },
    "train": {"epochs": 2, "devices": ["cpu", "cpu"]},
    "sweep": SHARED_SWEEP,
    "resources": {"train_model_parallel": {"cpus_per_task": 1}},
    "verify": {"runs": SHARED_VERIFIED},
}
LOCAL = ["--profile", "profiles/local", "--cores", "2", "--configfile", "overlay.yaml"]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A folder with the four FashionMNIST-format files: 2000 train, 500 test, seed 0."""
    from fmnist.data import synthetic

    folder = tmp_path_factory.mktemp("synthetic_fashion_mnist")
    synthetic.write_synthetic(folder, train_size=2000, test_size=500, seed=0)
    return folder


@pytest.fixture
def torch_state():
    """Put back what training changes process-wide: RNG, threads, flags, signal handlers."""
    import signal

    import torch

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGURG)}
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=[]):
        yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster's SLURM_CONF, set in os.environ for the rest of the session.

    Every snakemake run, its sbatch/srun/sacct calls and the jobs themselves (sbatch
    exports the environment) inherit it, so none can reach another SLURM on this machine.
    Inside a job the Snakemake jobstep plugin drops SLURM_* variables (SLURM_CONF too)
    before it runs srun: the cluster's client wrappers, first on PATH, put it back.
    """
    conf = start_slurm_cluster()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", conf)
        patch.setenv("PATH", f"{cluster_bin(conf)}{os.pathsep}{os.environ['PATH']}")
        yield conf


MULTI_NODE = 3  # nodes of the multi-node test cluster: a job on two, one to spare


@pytest.fixture
def multinode_cluster():
    """The multi-node test cluster's SLURM_CONF, set in os.environ for one test (it runs
    beside the session's one-node cluster, with its own state folder, ports and name)."""
    conf = start_slurm_cluster(MULTI_NODE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", conf)
        patch.setenv("PATH", f"{cluster_bin(conf)}{os.pathsep}{os.environ['PATH']}")
        yield conf


class FinishedWorkflow:
    """A copy of the workflow after `snakemake`, `snakemake verify` and `--report` (HTML and
    zip), with what each printed. Read it; to change anything, take a ``workflow_copy``."""

    def __init__(self, workdir: Path):
        import yaml

        self.workdir = workdir
        (workdir / "overlay.yaml").write_text(yaml.safe_dump(SHARED_OVERLAY, sort_keys=False))
        self.run = run_snakemake(workdir, *LOCAL)
        self.verify = self.run.returncode == 0 and run_snakemake(workdir, "verify", *LOCAL)
        self.report = self.verify and run_snakemake(
            workdir, "--configfile", "overlay.yaml", "--report", "results/report.html"
        )
        self.report_zip = self.report and run_snakemake(
            workdir, "--configfile", "overlay.yaml", "--report", "results/report.zip"
        )

    @staticmethod
    def output_of(result) -> str:
        return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"

    def ok(self) -> Path:
        for step in (self.run, self.verify, self.report, self.report_zip):
            assert step and step.returncode == 0, self.output_of(step or self.run)
        return self.workdir


@pytest.fixture(scope="session")
def finished_workflow(tmp_path_factory) -> FinishedWorkflow:
    """The shared end-to-end workflow (see SHARED_OVERLAY), built once per test run."""
    return FinishedWorkflow(copy_workflow(tmp_path_factory.mktemp("shared") / "wf"))


@pytest.fixture
def workflow_copy(finished_workflow, tmp_path) -> Path:
    """A private copy of the finished workflow (results, data and Snakemake's records,
    times kept), for a test that runs or changes something in it."""
    copy = tmp_path / "wf"
    shutil.copytree(finished_workflow.ok(), copy, symlinks=True)
    return copy


SHARED_WORKFLOW_FILES = (
    "tests/report/test_rocrate.py",
    "tests/workflow/test_end_to_end.py",
    "tests/workflow/test_verify_workflow.py",
)


def xdist_group(nodeid: str) -> str:
    """Which tests run in one pytest-xdist worker: the SLURM tests one after another (the
    test cluster has two CPUs and their time limits are real; they mostly wait, so the other
    worker trains meanwhile), the shared workflow's tests (built once), else a file's tests
    (its module fixtures built once)."""
    path = nodeid.split("::")[0]
    if path.startswith("tests/slurm/"):
        return "slurm"
    return "shared_workflow" if path in SHARED_WORKFLOW_FILES else path


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two workers (-n 2); tests are handed out by xdist_group, the SLURM
    group first (the longest chain: a worker starts on it at once)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

        def _assign_work_unit(self, node) -> None:
            if "slurm" in self.workqueue:
                self.workqueue.move_to_end("slurm", last=False)
            super()._assign_work_unit(node)

    return ByGroup(config, log)
