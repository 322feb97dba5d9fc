"""What the tests share: paths, running the workflow and train.py, fake run folders, the
test SLURM cluster. Imported as ``helpers``; fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "workflow" / "scripts"
TRAIN_SCRIPT = SCRIPTS_DIR / "train.py"
# The workflow's package (workflow/scripts/fmnist), importable as `fmnist` in every test.
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))
from fmnist.data import idx  # noqa: E402

METRICS = ["epoch", "train_loss", "test_loss", "test_accuracy"]


def import_script(name: str):
    """Import workflow/scripts/<name>.py as module ``name`` (once per session)."""
    path = SCRIPTS_DIR / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- workflows


def run_script(script: Path, *args, env=None) -> subprocess.CompletedProcess:
    """A workflow script as its rule runs it: a subprocess, its output captured as text."""
    command = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results, no .snakemake) to run in."""
    dest.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "Snakefile", dest / "Snakefile")
    shutil.copy2(REPO_ROOT / "slurm", dest / "slurm", follow_symlinks=False)  # the profile link
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(
            REPO_ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def snakemake_command(*args: str, limit: int = 600) -> list[str]:
    """snakemake bounded by `timeout -k`: a hung status poll must not hang the suite."""
    return ["timeout", "-k", "10", str(limit), "snakemake", *args]


def run_snakemake(
    workdir: Path, *args: str, limit: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """snakemake in ``workdir`` (a copy of the workflow), its output captured."""
    return subprocess.run(
        snakemake_command(*args, limit=limit),
        cwd=workdir,
        env=workflow_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=limit + 30,
    )


def workflow_env(**extra: str) -> dict:
    """The environment with this interpreter's bin first: the rules call `python`."""
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def metric_columns(epochs_csv: Path) -> list[tuple[str, ...]]:
    """The columns that must be identical between runs (times excluded)."""
    with epochs_csv.open() as handle:
        return [tuple(row[m] for m in METRICS) for row in csv.DictReader(handle)]


def merge(base: dict, update: dict) -> dict:
    """Key-by-key merge, like Snakemake's --configfile."""
    merged = dict(base)
    for key, value in update.items():
        is_dict = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if is_dict else value
    return merged


# --------------------------------------------------------------------------- train.py


@functools.cache
def _split(data_dir: Path, split: str):
    return idx.load_split(data_dir, split)


def train_batch(data_dir: Path, index, double_scaling: bool = False):
    """Images (B, 1, 28, 28) scaled like ToTensor, and int64 labels, of the train split."""
    import torch

    images, labels = _split(data_dir, "train")
    x = torch.from_numpy(images[index].astype("float32")).div(255.0).unsqueeze(1)
    if double_scaling:
        x = x.div(255.0)
    return x, torch.from_numpy(labels[index].astype("int64"))


HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"


# Hide every GPU, so the subprocesses behave the same on a machine that has some.
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


TIMEOUT = 300


def cli(data_dir: Path, out_dir: Path, **options) -> list[str]:
    """train.py's arguments: cpu/cpu, 3 epochs, 1 thread unless ``options`` say otherwise."""
    options = {"devices": ["cpu", "cpu"], "epochs": 3, "threads": 1, **options}
    args = ["--data-dir", str(data_dir), "--out-dir", str(out_dir)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


class Run:
    """train.py in a subprocess, its output in files next to its run folder."""

    def __init__(self, out: Path, args: list[str], env: dict | None = None):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self._stdout = open(out.parent / f"{out.name}.stdout", "w+")  # noqa: SIM115
        self._stderr = open(out.parent / f"{out.name}.stderr", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *args],
            stdout=self._stdout,
            stderr=self._stderr,
            env=ENV if env is None else env,
            text=True,
        )
        self._result = None

    def result(self) -> subprocess.CompletedProcess:
        if self._result is None:
            try:
                self.proc.wait(timeout=TIMEOUT)
            finally:
                self.proc.kill()
                self.proc.wait()
            outputs = []
            for handle in (self._stdout, self._stderr):
                handle.seek(0)
                outputs.append(handle.read())
                handle.close()
            self._result = subprocess.CompletedProcess(
                self.proc.args, self.proc.returncode, *outputs
            )
        return self._result

    def ok(self) -> subprocess.CompletedProcess:
        result = self.result()
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def run_train(out: Path, args: list[str]) -> subprocess.CompletedProcess:
    return Run(out, args).result()


def data_rows(out: Path) -> int:
    """Complete data rows in epochs.csv so far (0 while it is missing or empty)."""
    try:
        text = (out / "epochs.csv").read_text()
    except FileNotFoundError:
        return 0
    return max(text.count("\n") - 1, 0)


def metric_lines(out: Path) -> list[str]:
    """epochs.csv as written, cut to the columns that must not depend on timing."""
    lines = (out / "epochs.csv").read_text().splitlines()
    assert lines[0] == HEADER
    return [",".join(line.split(",")[:4]) for line in lines]


def epoch_column(out: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in metric_lines(out)[1:]]


def load_weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    import torch

    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def wait_for_exec(proc: subprocess.Popen, *argv: str) -> None:
    """Wait until ``proc`` runs the command line ``argv``. Popen returns once execve has
    dropped the old program, which can be before the new one's arguments are in
    /proc/PID/cmdline; a program it starts (ip netns exec) execs later still."""
    deadline = time.monotonic() + TIMEOUT
    expected = [word.encode() for word in argv]
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1] != expected:
        assert proc.poll() is None, f"{argv[0]} ended ({proc.returncode}) before it ran"
        assert time.monotonic() < deadline, f"{argv[0]} never ran"
        time.sleep(0.01)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class StopAfter:
    """A StopRequests stand-in that asks to stop before batch number ``batches`` + 1."""

    def __init__(self, batches: int | None):
        self.left = batches
        self.reason = None

    def should_stop(self) -> bool:
        if self.left is None:
            return False
        if self.left == 0:
            self.reason = "test"
            return True
        self.left -= 1
        return False


NEVER = StopAfter(None)


# --------------------------------------------------------------------- run folders, fake


RUN_HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"


# The training settings' defaults, written out: the tutorial's numbers (run.json's params).
DEFAULT_SETTINGS = {
    "devices": "auto",
    "epochs": 10,
    "batch_size": 100,
    "lr": 0.01,
    "hidden_sizes": [200],
    "activation": "log_softmax",
    "stage_split": "flops",
    "seed": 0,
    "tutorial_double_scaling": False,
    "microbatches": 1,
    "engine": "single_process",
    "schedule": "gpipe",
    "stages_per_process": 1,
    "adam_impl": "for_loop",
    "cpu_step": "kernels",
}


def make_record(run_id: str, params: dict, *, setup=None, attempts=None, **top) -> dict:
    """A valid format-2 run.json (workflow/schemas/run.schema.yaml) for ``params``.

    ``setup`` entries replace those of a CPU setup; each dict in ``attempts`` replaces
    entries of a finished CPU attempt (one by default); ``top`` replaces top-level keys.
    """
    base_attempt = {
        "started": "2026-11-27T20:00:00+00:00",
        "finished": "2026-11-27T20:05:00+00:00",
        "start_epoch": 1,
        "hostname": "node1",
        "device_names": ["cpu", "cpu"],
        "cuda_visible_devices": None,
        "slurm": None,
        "versions": {
            **dict.fromkeys(["torchvision", "snakemake", "numpy", "cuda", "cudnn"]),
            "python": "3.11.7",
            "torch": "2.14.1",
        },
    }
    determinism = {
        "deterministic_algorithms": True,
        "cudnn_benchmark": False,
        "cublas_workspace_config": None,
    }
    record = {
        "format": 2,
        "run_id": run_id,
        "params": params,
        "swept": [],
        "setup": {
            "devices": ["cpu", "cpu"],
            "train_step": "KernelStep",
            "threads": 1,
            "signal_seconds": 90.0,
            "data_dir": "resources/synthetic",
            "data_md5": {},
            "determinism": determinism,
            **(setup or {}),
        },
        "git": {"commit": "abc123", "dirty": False},
        "attempts": [{**base_attempt, **a} for a in (attempts or [{}])],
    }
    return {**record, **top}


def write_run_folder(root, run_id: str, rows, params: dict, header=RUN_HEADER, **record):
    """A run folder as training writes it: epochs.csv (``header``, then ``rows`` of cells)
    and run.json, ``make_record(run_id, params, **record)``, checked against its schema."""
    import json

    from fmnist.rundir import runfiles

    folder = Path(root) / run_id
    folder.mkdir(parents=True)
    lines = [header, *(",".join(map(str, row)) for row in rows)]
    (folder / runfiles.EPOCHS_FILE).write_text("\n".join(lines) + "\n")
    content = make_record(run_id, params, **record)
    runfiles.check_record(content, folder / runfiles.RECORD_FILE)
    (folder / runfiles.RECORD_FILE).write_text(json.dumps(content, indent=2) + "\n")
    return folder


BASE_PARAMS = {
    "devices": "auto",
    "epochs": 3,
    "batch_size": 100,
    "lr": 0.001,
    "hidden_sizes": [200],
    "seed": 0,
    "tutorial_double_scaling": False,
    "microbatches": 1,
    "adam_impl": "for_loop",
}


TUTORIAL_LOG = """\
Epoch [1/3], Loss: 0.5234
Some other line
Epoch [2/3], Loss: 0.4123
Epoch [3/3], Loss: 0.39
Training finished.
"""


def slurm_job(job_id: str, partition="debug", node="n1") -> dict:
    return {"job_id": job_id, "partition": partition, "node": node, "account": None, "gpus": None}


def write_run(
    root: Path,
    run_id: str,
    rows: list[tuple],
    header: str = RUN_HEADER,
    *,
    slurm: dict | None = None,
    git_commit: str | None = "abc123",
    stages=("cpu", "cpu"),
    **params,
) -> Path:
    """A run folder like training writes it; ``params`` override BASE_PARAMS."""
    return write_run_folder(
        root,
        run_id,
        rows,
        {**BASE_PARAMS, **params},
        header,
        swept=sorted(params),
        setup={"devices": list(stages)},
        git={"commit": git_commit, "dirty": False},
        attempts=[{"slurm": slurm, "device_names": ["cpu"] * len(stages)}],
    )


def three_epochs(final_acc: float, best=None, loss=0.3, sps=1000.0) -> list[tuple]:
    """Three epochs ending at ``final_acc`` (epoch 2 has ``best`` if given)."""
    mid = best if best is not None else final_acc - 0.05
    return [
        (1, 1.0, 1.1, final_acc - 0.10, 2.0, sps),
        (2, 0.5, 0.6, mid, 3.0, sps + 100),
        (3, loss, loss + 0.1, final_acc, 4.0, sps + 200),
    ]


def write_three_seeds(tmp_path: Path) -> list[Path]:
    """One configuration, seeds 0..2, final accuracies 0.80, 0.82, 0.84."""
    return [
        write_run(
            tmp_path / "runs",
            f"lr=0.001_seed={seed}",
            three_epochs(acc, loss=loss),
            seed=seed,
            slurm=slurm_job(f"{100 + seed}"),
        )
        for seed, acc, loss in [(0, 0.80, 0.30), (1, 0.82, 0.20), (2, 0.84, 0.40)]
    ]


def write_several_configs(tmp_path: Path) -> list[Path]:
    """Three learning rates with 3, 2 and 1 seeds; final accuracies 0.80..0.84, 0.70 and
    0.74, 0.5."""
    finals = {0.001: [0.80, 0.82, 0.84], 0.01: [0.70, 0.74], 0.1: [0.5]}
    return [
        write_run(tmp_path, f"lr={lr}_s={seed}", three_epochs(acc), lr=lr, seed=seed)
        for lr, accs in finals.items()
        for seed, acc in enumerate(accs)
    ]


def write_tutorial_log(path: Path, text: str = TUTORIAL_LOG) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- SLURM


SLURM_FLAGS = [
    "--profile",
    "profiles/slurm",
    # The test cluster answers at once; the plugin's default first wait is 40 s.
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "2",
]


START_SCRIPT = REPO_ROOT / "tests/slurm/start_cluster.sh"


@functools.cache
def start_slurm_cluster(nodes: int = 1) -> str:
    """Start (or confirm) the test cluster of ``nodes`` nodes; its SLURM_CONF path (the
    script's last line).

    The cluster is self-contained (its own config, munged, MariaDB and ports, all under
    its state folder, /var/tmp/mp-slurm-test-v2 by default, -3nodes appended for three):
    only clients that read this SLURM_CONF talk to it.
    """
    start = subprocess.run(
        ["bash", str(START_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=cluster_script_env(nodes),
    )
    assert start.returncode == 0, (
        f"SLURM test cluster did not start:\n{start.stdout}\n{start.stderr}"
    )
    conf = start.stdout.strip().splitlines()[-1]
    assert os.path.isabs(conf) and os.path.isfile(conf), start.stdout
    assert (cluster_bin(conf) / "srun").is_file(), start.stdout
    return conf


# What chooses another state folder, name or ports than the default cluster's.
CLUSTER_OVERRIDES = [
    f"SLURM_TEST_{name}" for name in ("STATE", "CLUSTER", "CTLD_PORT", "SLURMD_PORT", "DBD_PORT")
]


def cluster_script_env(nodes: int = 1) -> dict:
    """The environment of start_cluster.sh/stop_cluster.sh for the cluster of ``nodes``
    nodes; a multi-node cluster is always the default one of its size (a state folder or
    ports chosen for the one-node cluster would otherwise be shared with it)."""
    if nodes == 1:
        return dict(os.environ)
    kept = {k: v for k, v in os.environ.items() if k not in CLUSTER_OVERRIDES}
    return kept | {"SLURM_TEST_NODES": str(nodes)}


def cluster_bin(conf: str) -> Path:
    """The cluster's client wrappers (srun, squeue, ...: SLURM_CONF defaults to ``conf``)."""
    return Path(conf).parent.parent / "bin"


def slurm_env() -> dict:
    # Without the fixture's SLURM_CONF, sbatch would submit to whatever SLURM
    # /etc/slurm describes on this machine.
    assert os.environ.get("SLURM_CONF"), "SLURM_CONF is unset: use the slurm_cluster fixture"
    return workflow_env(FMNIST_SLURM_ACCOUNT="root", FMNIST_SLURM_PARTITION="debug")


def stage_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the stage processes the launcher started (their RANK variable)."""
    pids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                pids[int(item[5:])] = int(stat.parent.name)
    return pids


def interrupt(run: Run, sig: int, target: str = "launcher") -> float:
    """Once epoch 1 is written and epoch 2 has begun (an epoch takes ~0.7 s in the
    distributed tests), send ``sig`` to stage 1's process or to the process the test started
    (train.py: the launcher of the stage processes, as Snakemake or a user would); seconds
    until that process has exited."""
    deadline = time.monotonic() + TIMEOUT
    while data_rows(run.out) < 1:
        assert run.proc.poll() is None, run.result().stderr
        assert time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.01)
    pid = run.proc.pid
    if target == "stage 1":
        pids = stage_pids(run.proc.pid)
        assert 1 in pids, pids
        pid = pids[1]
    time.sleep(0.3)
    os.kill(pid, sig)
    sent = time.monotonic()
    run.result()
    return time.monotonic() - sent


REQUEUE_SETTLE_S = 5.0  # seconds a requeued job waits before it is released


@contextlib.contextmanager
def requeued_jobs_released():
    """Start requeued jobs early, as an admin can, instead of after SLURM's ~2 minutes of
    BeginTime: the behaviour under test is the same, the suite just waits less. A job is
    released a few seconds after its requeue, not at once: slurmd must first have cleaned
    up its previous allocation, or the new one fails with "Job credential revoked".
    The cluster is the one SLURM_CONF names while this runs."""
    stop = threading.Event()
    waiting_since: dict[str, float] = {}

    def release():
        while not stop.wait(1.0):
            pending = subprocess.run(
                ["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True
            ).stdout.split("\n")
            for job, _, reason in (line.partition(" ") for line in pending if line):
                if reason != "BeginTime":  # not (or no longer) held back after a requeue
                    waiting_since.pop(job, None)
                    continue
                since = waiting_since.setdefault(job, time.monotonic())
                if time.monotonic() - since >= REQUEUE_SETTLE_S:
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
                    del waiting_since[job]

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
