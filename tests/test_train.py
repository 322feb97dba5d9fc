"""Tests of workflow/scripts/train.py: model parallelism, exactness, resume, CLI, provenance.

The training runs here use the synthetic 2000/500 dataset, --threads 1 and a few
epochs. Runs that do not depend on each other start together (module fixture
``runs``) so that their interpreter start-ups overlap.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, SCRIPTS_DIR, import_script
from torch import nn

train_py = import_script("train")
fashion_mnist = import_script("fashion_mnist")

TRAIN_SCRIPT = SCRIPTS_DIR / "train.py"
CPU = torch.device("cpu")
META = torch.device("meta")
HEADER = "epoch,train_loss,test_loss,test_accuracy,epoch_seconds,samples_per_second"
PARAM_NAMES = ["stages.0.0.weight", "stages.0.0.bias", "stages.1.weight", "stages.1.bias"]
# Hide every GPU, so the subprocesses behave the same on a machine that has some.
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
# Long enough (200 batches of 10 per epoch) to interrupt a run in the middle.
# Ten epochs of ~0.15 s: the kill after epoch 2 has a second of slack on a busy machine.
RESUME = {"batch_size": 10, "epochs": 10}
TIMEOUT = 300


# --------------------------------------------------------------------------- helpers


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
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
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


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tutorial_net(hidden: int = 200) -> nn.Sequential:
    """The tutorial's SeqNet, on one device."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden),
        nn.LogSoftmax(dim=1),
        nn.Linear(hidden, 10),
    )


@functools.cache
def load_split(data_dir: Path, split: str):
    return fashion_mnist.load_split(data_dir, split)


def batch(data_dir: Path, index, double_scaling: bool = False):
    """Images (B, 1, 28, 28) scaled like ToTensor, and int64 labels, of the train split."""
    images, labels = load_split(data_dir, "train")
    x = torch.from_numpy(images[index].astype(np.float32)).div(255.0).unsqueeze(1)
    if double_scaling:
        x = x.div(255.0)
    return x, torch.from_numpy(labels[index].astype(np.int64))


class StopAfter:
    """A StopWatch stand-in that asks to stop before batch number ``batches`` + 1."""

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


def trainer(data_dir: Path, out: Path, **options):
    """A Trainer for these settings, built as train.py builds it (global RNG reseeded)."""
    out.mkdir(parents=True, exist_ok=True)
    return train_py.Trainer(train_py.parse_args(cli(data_dir, out, **options)), [CPU, CPU])


def timeless(history: list[dict]) -> list[dict]:
    drop = {"epoch_seconds", "samples_per_second"}
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


@pytest.fixture
def torch_state():
    """Put back what train.py changes process-wide: RNG, threads, flags, signal handlers."""
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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process training uses one thread too: the CPU is shared with the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def runs(synthetic_data, tmp_path_factory):
    """Independent train.py runs, all started at once; ``runs[name].result()`` waits.

    "repeat" has the reference settings and starts next to a checkpoint of other
    settings (lr 0.02), which it must ignore: it is both the determinism check's
    second run and the stale-checkpoint check's run.
    """
    root = tmp_path_factory.mktemp("train_runs")
    with torch.random.fork_rng(devices=[]):
        t = trainer(synthetic_data, root / "repeat", lr=0.02)
        assert t.run_epoch_batches(NEVER)
        t.finish_epoch()
        t.save_checkpoint()
    specs = {"ref": {}, "repeat": {}, "seed1": {"seed": 1}, "resume_ref": RESUME}
    started = {
        name: Run(root / name, cli(synthetic_data, root / name, **spec))
        for name, spec in specs.items()
    }
    yield started
    for run in started.values():
        run.proc.kill()
        run.result()


# ------------------------------------------------------------------ 1. placement


def test_two_cpu_stages_hold_the_tutorial_layers():
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "stages.0.0.weight": (200, 784),
        "stages.0.0.bias": (200,),
        "stages.1.weight": (10, 200),
        "stages.1.bias": (10,),
    }
    assert isinstance(model.stages[0][1], nn.LogSoftmax) and model.stages[0][1].dim == 1
    for i, stage in enumerate(model.stages):
        assert [p.device for p in stage.parameters()] == [CPU, CPU], i
    # forward is the tutorial's: linear, log_softmax, linear.
    x = torch.rand(5, 1, 28, 28)
    w1, b1, w2, b2 = (p.detach() for p in model.parameters())
    expected = F.linear(F.log_softmax(F.linear(x.flatten(1), w1, b1), dim=1), w2, b2)
    assert torch.equal(model(x), expected)


def test_activations_move_from_stage_0_to_stage_1():
    model = train_py.ModelParallelMLP(200, [CPU, META])
    assert {p.device for p in model.stages[0].parameters()} == {CPU}
    assert {p.device for p in model.stages[1].parameters()} == {META}
    # Without the move, F.linear(cpu input, meta weight) raises.
    out = model(torch.rand(7, 1, 28, 28))
    assert out.device == META
    assert out.shape == (7, 10)
    loss = train_py.pipelined_loss(
        model, torch.rand(7, 1, 28, 28), torch.zeros(7, dtype=torch.int64, device=META), 3
    )
    assert loss.device == META
    assert loss.shape == ()


def test_meta_to_cpu_fails_when_the_activation_is_copied():
    model = train_py.ModelParallelMLP(200, [META, CPU])
    assert {p.device for p in model.stages[0].parameters()} == {META}
    assert {p.device for p in model.stages[1].parameters()} == {CPU}
    # A meta activation has no data to copy to the CPU. (A model that forgot the move
    # would fail differently: "Tensor on device meta is not on the expected device cpu".)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        model(torch.rand(3, 1, 28, 28))


def test_initial_weights_do_not_depend_on_the_devices():
    torch.manual_seed(3)
    both_cpu = train_py.ModelParallelMLP(50, [CPU, CPU]).state_dict()
    torch.manual_seed(3)
    second_meta = train_py.ModelParallelMLP(50, [CPU, META]).state_dict()
    torch.manual_seed(3)
    first_meta = train_py.ModelParallelMLP(50, [META, CPU]).state_dict()
    for key in ("stages.0.0.weight", "stages.0.0.bias"):
        assert torch.equal(second_meta[key], both_cpu[key])
    for key in ("stages.1.weight", "stages.1.bias"):
        assert torch.equal(first_meta[key], both_cpu[key])


# ------------------------------------------------- 2. two stages == one device


def test_two_cpu_stages_train_bitwise_like_the_tutorial_net(synthetic_data):
    torch.manual_seed(0)
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    torch.manual_seed(0)
    reference = tutorial_net()
    ref_state = reference.state_dict()
    for name, ref_name in zip(PARAM_NAMES, ["1.weight", "1.bias", "3.weight", "3.bias"]):
        assert torch.equal(model.state_dict()[name], ref_state[ref_name])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).numpy()
    losses, ref_losses = [], []
    for step in range(30):
        x, y = batch(synthetic_data, order[(step % 20) * 100 : (step % 20 + 1) * 100])
        opt.zero_grad()
        loss = train_py.pipelined_loss(model, x, y, 1)
        loss.backward()
        opt.step()
        ref_opt.zero_grad()
        ref_loss = criterion(reference(x), y)
        ref_loss.backward()
        ref_opt.step()
        losses.append(loss.detach())
        ref_losses.append(ref_loss.detach())
    losses, ref_losses = torch.stack(losses), torch.stack(ref_losses)
    assert torch.equal(losses, ref_losses)
    assert len(set(losses.tolist())) == 30  # it trained: every step's loss is different
    for name, ref_name in zip(PARAM_NAMES, ["1.weight", "1.bias", "3.weight", "3.bias"]):
        assert torch.equal(model.state_dict()[name], reference.state_dict()[ref_name])


# ---------------------------------------------------------------- 3. microbatches


def _loss_and_grads(model, x, y, microbatches):
    model.zero_grad()
    loss = train_py.pipelined_loss(model, x, y, microbatches)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_one_microbatch_is_the_tutorial_loss(synthetic_data):
    torch.manual_seed(0)
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    torch.manual_seed(0)
    reference = tutorial_net()
    x, y = batch(synthetic_data, slice(0, 100))
    loss = train_py.pipelined_loss(model, x, y, 1)
    assert torch.equal(loss, F.cross_entropy(model(x), y))
    assert torch.equal(loss, nn.CrossEntropyLoss()(reference(x), y))


@pytest.mark.parametrize("microbatches", [2, 3, 4, 7, 100])
def test_microbatched_loss_and_gradients_match_the_whole_batch(synthetic_data, microbatches):
    torch.manual_seed(0)
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    x, y = batch(synthetic_data, slice(0, 100))
    loss, grads = _loss_and_grads(model, x, y, 1)
    split_loss, split_grads = _loss_and_grads(model, x, y, microbatches)
    torch.testing.assert_close(split_loss, loss, rtol=1e-6, atol=0)
    for name, g, ref in zip(PARAM_NAMES, split_grads, grads):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7, msg=name)


def test_microbatches_are_weighted_by_their_size(synthetic_data):
    """100 rows in 7 chunks are 6 x 15 + 10: a mean of chunk means would be off."""
    torch.manual_seed(0)
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    x, y = batch(synthetic_data, slice(0, 100))
    with torch.no_grad():
        whole = F.cross_entropy(model(x), y)
        mean_of_means = torch.stack(
            [F.cross_entropy(o, t) for o, t in zip(model(x).chunk(7), y.chunk(7))]
        ).mean()
        split = train_py.pipelined_loss(model, x, y, 7)
    assert abs(float(mean_of_means - whole)) > 1e-3  # the tolerance above would catch it
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=0)


def test_a_last_batch_smaller_than_the_microbatch_count(synthetic_data):
    torch.manual_seed(0)
    model = train_py.ModelParallelMLP(200, [CPU, CPU])
    x, y = batch(synthetic_data, slice(0, 5))
    loss, grads = _loss_and_grads(model, x, y, 1)
    split_loss, split_grads = _loss_and_grads(model, x, y, 7)
    torch.testing.assert_close(split_loss, loss, rtol=1e-6, atol=0)
    for g, ref in zip(split_grads, grads):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)


def test_pipeline_schedule_overlaps_the_stages():
    """At tick t stage 0 runs chunk t while stage 1 runs chunk t - 1 (GPipe)."""
    model = train_py.ModelParallelMLP(20, [CPU, CPU])
    calls = []
    for s, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda m, inp, out, s=s: calls.append((s, inp[0].shape[0])))
    x = torch.rand(10, 1, 28, 28)  # 4 micro-batches: 3, 3, 3, 1 rows
    train_py.pipelined_loss(model, x, torch.zeros(10, dtype=torch.int64), 4)
    assert calls == [(0, 3), (0, 3), (1, 3), (0, 3), (1, 3), (0, 1), (1, 3), (1, 1)]


# --------------------------------------------------------------- 4. determinism


def test_same_seed_same_numbers(runs):
    ref, repeat = runs["ref"].ok(), runs["repeat"].ok()
    assert ref.stdout.startswith("devices: ['cpu', 'cpu'] (as configured)\nEpoch [1/3], Loss: ")
    lines = metric_lines(runs["ref"].out)
    assert len(lines) == 4
    assert epoch_column(runs["ref"].out) == [1, 2, 3]
    assert metric_lines(runs["repeat"].out) == lines
    weights = load_weights(runs["ref"].out / "model.pt")
    assert list(weights) == PARAM_NAMES
    assert_same_tensors(load_weights(runs["repeat"].out / "model.pt"), weights)
    assert not (runs["ref"].out / "checkpoint.pt").exists()
    assert ref.stderr == repeat.stderr == ""


def test_another_seed_other_numbers(runs):
    runs["seed1"].ok()
    ref = [line.split(",") for line in metric_lines(runs["ref"].out)[1:]]
    other = [line.split(",") for line in metric_lines(runs["seed1"].out)[1:]]
    assert len(other) == 3
    for a, b in zip(ref, other):
        assert a[0] == b[0] and a[1] != b[1] and a[2] != b[2]
    weights = load_weights(runs["seed1"].out / "model.pt")
    ref_weights = load_weights(runs["ref"].out / "model.pt")
    assert all(not torch.equal(weights[k], ref_weights[k]) for k in PARAM_NAMES)


def test_epochs_csv_holds_the_trainer_history_exactly(runs):
    """The file's floats are repr()s: they read back as the very values in run.json."""
    runs["ref"].ok()
    info = json.loads((runs["ref"].out / "run.json").read_text())
    last = (runs["ref"].out / "epochs.csv").read_text().splitlines()[-1].split(",")
    assert info["final"]["epoch"] == int(last[0]) == 3
    for i, key in enumerate(HEADER.split(",")[1:], start=1):
        assert info["final"][key] == float(last[i]), key
    assert 0.0 <= info["final"]["test_accuracy"] <= 1.0
    assert info["final"]["test_accuracy"] * 500 == round(info["final"]["test_accuracy"] * 500)


# ---------------------------------------------------- 5./6./12. stop and resume


def test_resume_after_sigkill_gives_the_uninterrupted_run(runs, synthetic_data, tmp_path):
    out = tmp_path / "killed"
    args = cli(synthetic_data, out, **RESUME)
    first = Run(out, args)
    try:
        wait_until(lambda: data_rows(out) >= 2, first.proc, "two epochs were written")
        first.proc.send_signal(signal.SIGKILL)
    finally:
        killed = first.result()
    assert killed.returncode == -signal.SIGKILL

    checkpoint = out / "checkpoint.pt"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # 12.
    assert set(state) == {
        "fingerprint",
        "model",
        "optimizer",
        "torch_rng",
        "shuffle_rng",
        "epoch",
        "order",
        "batch_losses",
        "batches_done",
        "epoch_seconds_so_far",
        "history",
        "attempts",
    }
    assert list(state["model"]) == PARAM_NAMES
    assert 1 <= state["epoch"] < RESUME["epochs"]
    assert len(state["history"]) == state["epoch"]
    assert len(state["attempts"]) == 1 and "finished" not in state["attempts"][0]

    second = run_train(out, args)
    assert second.returncode == 0, second.stderr
    where = f"epoch {state['epoch'] + 1}, batch {state['batches_done'] + 1}"
    assert f"resuming from {checkpoint}: {where}" in second.stdout

    runs["resume_ref"].ok()
    assert metric_lines(out) == metric_lines(runs["resume_ref"].out)
    assert epoch_column(out) == list(range(1, RESUME["epochs"] + 1))
    assert_same_tensors(
        load_weights(out / "model.pt"), load_weights(runs["resume_ref"].out / "model.pt")
    )
    assert not checkpoint.exists()
    info = json.loads((out / "run.json").read_text())
    attempts = info["attempts"]
    assert [a["start_epoch"] for a in attempts] == [1, state["epoch"] + 1]
    assert info["started"] == attempts[0]["started"] == state["attempts"][0]["started"]
    assert info["finished"] == attempts[1]["finished"]
    assert "finished" not in attempts[0] and "finished" in attempts[1]


def test_sigterm_stops_with_a_checkpoint_and_resume_is_exact(runs, synthetic_data, tmp_path):
    out = tmp_path / "stopped"
    args = cli(synthetic_data, out, **RESUME)
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # handlers are in place once epoch 1 is logged
            seen.append(line)
            if line.startswith(f"Epoch [1/{RESUME['epochs']}]"):
                proc.send_signal(signal.SIGTERM)
                break
        rest, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    stdout = "".join(seen) + rest
    assert proc.returncode == train_py.EXIT_RESUMABLE == 75, stdout + stderr

    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    epoch, done = state["epoch"], state["batches_done"]
    assert 1 <= epoch < RESUME["epochs"]
    assert 0 <= done < 200
    assert (
        f"stopping early: received SIGTERM. Checkpoint saved at epoch {epoch + 1}, "
        f"batch {done + 1}; run again to resume (exit 75)"
    ) in stdout
    # Stopped inside an epoch: its shuffle order and the losses so far are saved.
    assert torch.equal(state["order"].sort().values, torch.arange(2000))
    losses = state["batch_losses"]
    assert losses.shape == (200,)
    assert bool((losses[:done] > 0).all()) and bool((losses[done:] == 0).all())
    assert data_rows(out) == epoch
    assert state["attempts"][0]["stopped"] == "received SIGTERM"

    second = run_train(out, args)
    assert second.returncode == 0, second.stderr
    assert f"resuming from {out / 'checkpoint.pt'}: epoch {epoch + 1}, batch {done + 1}" in (
        second.stdout
    )
    runs["resume_ref"].ok()
    assert metric_lines(out) == metric_lines(runs["resume_ref"].out)
    assert epoch_column(out) == list(range(1, RESUME["epochs"] + 1))
    assert_same_tensors(
        load_weights(out / "model.pt"), load_weights(runs["resume_ref"].out / "model.pt")
    )
    assert not (out / "checkpoint.pt").exists()
    attempts = json.loads((out / "run.json").read_text())["attempts"]
    assert len(attempts) == 2
    assert attempts[0]["stopped"] == "received SIGTERM" and "stopped" not in attempts[1]


def test_resume_in_the_middle_of_an_epoch_is_exact(synthetic_data, tmp_path, torch_state):
    """Deterministic version of the SIGTERM case: stop after 13 batches of epoch 2 of 3."""
    options = {"batch_size": 50, "epochs": 3}
    full = trainer(synthetic_data, tmp_path / "full", **options)
    for _ in range(3):
        assert full.run_epoch_batches(NEVER)
        full.finish_epoch()

    part = trainer(synthetic_data, tmp_path / "part", **options)
    assert part.run_epoch_batches(NEVER)
    part.finish_epoch()
    assert not part.run_epoch_batches(StopAfter(13))
    assert (part.epoch, part.batches_done) == (1, 13)
    part.save_checkpoint()

    resumed = trainer(synthetic_data, tmp_path / "part", **options)  # as a new process would
    state = train_py.load_checkpoint(resumed.checkpoint_path, resumed.fingerprint)
    assert state is not None
    resumed.restore(state)
    assert (resumed.epoch, resumed.batches_done) == (1, 13)
    for _ in range(2):
        assert resumed.run_epoch_batches(NEVER)
        resumed.finish_epoch()

    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert timeless(resumed.history) == timeless(full.history)
    assert_same_tensors(resumed.model.state_dict(), full.model.state_dict())
    opt, ref_opt = resumed.optimizer.state_dict()["state"], full.optimizer.state_dict()["state"]
    assert list(opt) == [0, 1, 2, 3]
    for i in opt:
        assert_same_tensors(opt[i], ref_opt[i])


def test_stopwatch_signals(monkeypatch, capsys, torch_state):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGURG):
        watch = train_py.StopWatch(90.0)
        assert signal.getsignal(sig) == watch._on_signal  # else raise_signal ends pytest
        assert not watch.should_stop()
        signal.raise_signal(sig)
        assert watch.should_stop()
        assert watch.reason == f"received {sig.name}"
    assert capsys.readouterr().out == ""


def test_stopwatch_slurm_deadline(monkeypatch, capsys, torch_state):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    end = [time.time() + 1000]
    monkeypatch.setattr(train_py, "slurm_end_time", lambda: end[0])
    watch = train_py.StopWatch(90.0)
    assert watch.deadline == end[0] - 90
    assert "will stop 90 s before it" in capsys.readouterr().out
    # Under SLURM, SIGURG (the warning signal) only makes it read the end time again.
    signal.raise_signal(signal.SIGURG)
    assert not watch.should_stop()
    end[0] = time.time() + 60  # the limit was shortened: now inside the margin
    signal.raise_signal(signal.SIGURG)
    assert watch.should_stop()
    assert watch.reason == "the SLURM time limit is near"
    # A start inside the margin keeps half the time left for work.
    end[0] = time.time() + 60
    watch = train_py.StopWatch(90.0)
    assert end[0] - 60 < watch.deadline <= end[0] - 29
    assert not watch.should_stop()
    assert "below the 90 s margin: using half" in capsys.readouterr().out


def test_stopwatch_notices_an_extended_limit(monkeypatch, torch_state):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    end = [time.time() + 100]
    monkeypatch.setattr(train_py, "slurm_end_time", lambda: end[0])
    watch = train_py.StopWatch(99.9)
    end[0] = time.time() + 1000  # an admin extended the limit; no signal says so
    time.sleep(0.2)  # past the first deadline
    assert not watch.should_stop()
    assert watch.deadline == pytest.approx(end[0] - 99.9)


def test_checkpoint_of_other_settings_is_ignored(runs):
    run = runs["repeat"]
    result = run.ok()
    checkpoint = run.out / "checkpoint.pt"
    assert f"checkpoint {checkpoint} belongs to other settings or data; starting from scratch" in (
        result.stdout
    )
    assert "resuming" not in result.stdout
    runs["ref"].ok()
    assert metric_lines(run.out) == metric_lines(runs["ref"].out)
    assert_same_tensors(
        load_weights(run.out / "model.pt"), load_weights(runs["ref"].out / "model.pt")
    )
    assert len(json.loads((run.out / "run.json").read_text())["attempts"]) == 1
    assert not checkpoint.exists()


def test_the_other_settings_differ_only_in_lr(synthetic_data, tmp_path, torch_state):
    a = trainer(synthetic_data, tmp_path / "a")
    b = trainer(synthetic_data, tmp_path / "b", lr=0.02)
    assert {k for k in a.params if a.params[k] != b.params[k]} == {"lr"}
    assert a.fingerprint != b.fingerprint
    assert trainer(synthetic_data, tmp_path / "c").fingerprint == a.fingerprint


def test_unreadable_checkpoint_starts_from_scratch(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    assert train_py.load_checkpoint(path, "anything") is None
    assert f"checkpoint {path} is unreadable" in capsys.readouterr().out
    assert train_py.load_checkpoint(tmp_path / "missing.pt", "anything") is None


# ------------------------------------------------------------ 8. non-finite loss


def test_non_finite_loss_names_epoch_and_batch(synthetic_data, tmp_path, capsys, torch_state):
    """An uncaught exception: the interpreter exits with status 1."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError) as error:
        train_py.main(cli(synthetic_data, out, lr=1e30, epochs=2))
    assert str(error.value) == (
        "non-finite training loss (nan) at epoch 1, batch 2 of 20; "
        "try a smaller train.lr or check the data"
    )
    assert "Epoch [1/2]" not in capsys.readouterr().out
    assert not (out / "model.pt").exists() and not (out / "run.json").exists()
    assert not (out / "checkpoint.pt").exists()
    assert data_rows(out) == 0


# -------------------------------------------------------------------- 9. devices


def test_missing_gpus_exit_2_before_training(
    synthetic_data, tmp_path, capsys, monkeypatch, torch_state
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on this machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_py.main(cli(synthetic_data, out, devices=["cuda:0", "cuda:1"]))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: train.devices requests ['cuda:0', 'cuda:1'] but cuda:0 is not visible "
        "(torch.cuda.device_count()=0, CUDA_VISIBLE_DEVICES=). "
        "Use devices: auto, or [cpu, cpu] to train on the CPU.\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("count", "expected", "why"),
    [
        (0, ["cpu", "cpu"], "no GPU visible: both stages on the CPU"),
        (1, ["cuda:0", "cuda:0"], "one GPU visible: both stages on it"),
        (3, ["cuda:0", "cuda:1"], "3 GPUs visible: one per stage"),
    ],
)
def test_auto_devices(monkeypatch, count, expected, why):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    devices, message = train_py.resolve_devices(["auto"])
    assert devices == [torch.device(d) for d in expected]
    assert message == f"devices: auto -> {expected} ({why})"


def test_configured_devices(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train_py.resolve_devices(["cpu"]) == (
        [CPU, CPU],
        "devices: ['cpu', 'cpu'] (as configured)",
    )
    assert train_py.resolve_devices(["cpu", "cuda:0"])[0] == [CPU, torch.device("cuda:0")]
    with pytest.raises(SystemExit) as exit_info:
        train_py.resolve_devices(["cuda:0", "cuda:1"])
    assert exit_info.value.code == 2
    assert "but cuda:1 is not visible (torch.cuda.device_count()=1, CUDA_VISIBLE_DEVICES=" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        train_py.resolve_devices(["cpu", "cpu", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: train.devices needs 1 or 2 devices, got ['cpu', 'cpu', 'cpu']\n"
    )


def test_bad_device_string_exits_2(synthetic_data, tmp_path, capsys, torch_state):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_py.main(cli(synthetic_data, out, devices=["tpu"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.devices: ")
    assert "device string: tpu" in err
    assert not out.exists()


def test_auto_on_a_machine_without_gpus_trains_on_the_cpu(
    synthetic_data, tmp_path, capsys, monkeypatch, torch_state
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "run"
    assert train_py.main(cli(synthetic_data, out, devices=["auto"], epochs=1)) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith(
        "devices: auto -> ['cpu', 'cpu'] (no GPU visible: both stages on the CPU)\n"
    )
    info = json.loads((out / "run.json").read_text())
    assert info["devices"]["stages"] == ["cpu", "cpu"]
    assert info["config"]["devices_resolved"] == ["cpu", "cpu"]
    assert info["params"]["devices"] == ["auto"]
    assert epoch_column(out) == [1]


# ---------------------------------------------------------------- 10. run.json


def test_run_json_provenance(runs, synthetic_data):
    runs["ref"].ok()
    out = runs["ref"].out
    info = json.loads((out / "run.json").read_text())
    assert info["params"] == {
        "devices": ["cpu", "cpu"],
        "epochs": 3,
        "batch_size": 100,
        "lr": 0.01,
        "hidden_size": 200,
        "seed": 0,
        "tutorial_double_scaling": False,
        "microbatches": 1,
        "adam_impl": "for_loop",
    }
    assert info["run_id"] == "ref"
    assert info["seed"] == 0
    assert info["config"]["threads"] == 1
    assert info["config"]["data_dir"] == str(synthetic_data)
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert info["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert isinstance(info["git"]["dirty"], bool) or info["git"]["commit"] is None
    expected_md5 = {name: md5_of(synthetic_data / name) for name in fashion_mnist.FILE_NAMES}
    assert info["data_md5"] == expected_md5
    assert fashion_mnist.read_md5_file(synthetic_data / "MD5SUMS") == expected_md5
    assert info["hostname"] == socket.gethostname()
    started = dt.datetime.fromisoformat(info["started"])
    finished = dt.datetime.fromisoformat(info["finished"])
    assert started.tzinfo is not None and started <= finished
    assert info["devices"]["stages"] == ["cpu", "cpu"]
    assert len(info["devices"]["names"]) == 2
    assert info["determinism"]["deterministic_algorithms"] is True
    assert info["determinism"]["cudnn_benchmark"] is False
    assert info["determinism"]["threads"] == 1
    assert info["cuda_visible_devices"] == ""
    assert [a["start_epoch"] for a in info["attempts"]] == [1]
    assert info["attempts"][0]["started"] == info["started"]


# ---------------------------------------------------------- 11. CLI and scaling


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_py.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    for flag in ("--data-dir", "--devices", "--microbatches", "--tutorial-double-scaling"):
        assert flag in out


def test_more_microbatches_than_batch_rows_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_py.parse_args(cli(tmp_path, tmp_path, batch_size=4, microbatches=5))
    assert exit_info.value.code == 2
    assert "--microbatches (5) cannot exceed --batch-size (4)" in capsys.readouterr().err


@pytest.mark.parametrize("double", [False, True])
def test_batches_are_scaled_like_the_tutorial(synthetic_data, tmp_path, torch_state, double):
    options = {"tutorial_double_scaling": True} if double else {}
    t = trainer(synthetic_data, tmp_path / "run", **options)
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    x, y = t.batches(order[:100], order[:100])
    expected_x, expected_y = batch(synthetic_data, order[:100].numpy(), double_scaling=double)
    assert torch.equal(x, expected_x.flatten(1))
    assert torch.equal(y, expected_y)
    one_255th = torch.tensor(1 / 255, dtype=torch.float32)
    assert bool(x.max() <= one_255th) == double
    # evaluation scales the test images the same way
    images, labels = load_split(synthetic_data, "test")
    test_x = torch.from_numpy(images.astype(np.float32)).div(255.0)
    if double:
        test_x = test_x.div(255.0)
    test_y = torch.from_numpy(labels.astype(np.int64))
    with torch.no_grad():
        out = t.model(test_x)
    expected_loss = F.cross_entropy(out, test_y, reduction="sum").item() / 500
    expected_accuracy = int((out.argmax(dim=1) == test_y).sum()) / 500
    assert t.evaluate() == (expected_loss, expected_accuracy)


def test_double_scaling_changes_the_numbers(synthetic_data, tmp_path, torch_state):
    histories = []
    for double in (False, True):
        options = {"tutorial_double_scaling": True} if double else {}
        t = trainer(synthetic_data, tmp_path / str(double), **options)
        assert t.params["tutorial_double_scaling"] is double
        assert t.run_epoch_batches(NEVER)
        histories.append(t.finish_epoch())
    single, double = histories
    for key in ("train_loss", "test_loss"):
        assert single[key] != double[key], key


def test_meta_devices_are_refused(synthetic_data, tmp_path, capsys, torch_state):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_py.main(cli(synthetic_data, out, devices=["meta", "meta"]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: train.devices: unsupported device meta\n"


def test_thread_count_is_part_of_the_checkpoint_fingerprint(torch_state):
    # CPU matmuls sum differently with more threads: a resume must not mix the two.
    args = ({"lr": 0.01}, [CPU, CPU], {"f": "0" * 32})
    torch.set_num_threads(1)
    one = train_py.fingerprint(*args)
    torch.set_num_threads(2)
    assert train_py.fingerprint(*args) != one
    torch.set_num_threads(1)
    assert train_py.fingerprint(*args) == one


def test_hand_written_step_only_where_all_stages_are_on_the_cpu(torch_state):
    cpu_model = train_py.ModelParallelMLP(8, [CPU, CPU])
    cpu_adam = torch.optim.Adam(cpu_model.parameters())
    assert type(train_py.make_step(cpu_model, cpu_adam, 10, 1)) is train_py.TrainStep
    # A stand-in for a GPU stage: the step falls back to autograd and torch.optim.Adam.
    mixed = train_py.ModelParallelMLP(8, [CPU, META])
    mixed_adam = torch.optim.Adam(mixed.parameters())
    assert type(train_py.make_step(mixed, mixed_adam, 10, 2)) is train_py.AutogradStep
