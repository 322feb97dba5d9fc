"""Tests of training end to end (train.py and fmnist/engine/trainer.py): determinism, resume, CLI,
provenance, data scaling. The model itself is tested in test_model.py.

The training runs here use the synthetic 2000/500 dataset, --threads 1 and a few
epochs. Runs that do not depend on each other start together (module fixture
``runs``) so that their interpreter start-ups overlap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cuda_standin import fake_cuda
from fmnist.config import settings
from fmnist.data import idx
from fmnist.engine import checkpoint
from fmnist.engine.checkpoint import ADAM_STATE, POSITION_KEYS
from fmnist.engine.single_process import SingleProcessEngine
from fmnist.engine.trainer import EXIT_RESUMABLE, Trainer, resume
from fmnist.rundir import files, runfiles
from helpers import (
    ENV,
    HEADER,
    NEVER,
    REPO_ROOT,
    TIMEOUT,
    TRAIN_SCRIPT,
    Run,
    StopAfter,
    assert_same_tensors,
    cli,
    data_rows,
    epoch_column,
    import_script,
    load_weights,
    md5_of,
    metric_lines,
    run_train,
    train_batch,
    wait_until,
)
from torch.distributed.checkpoint import FileSystemReader

train_py = import_script("train")

CPU = torch.device("cpu")
META = torch.device("meta")
PARAM_NAMES = ["stages.0.0.weight", "stages.0.0.bias", "stages.1.weight", "stages.1.bias"]
# Long enough (200 batches of 10 per epoch) to interrupt a run in the middle.
# Ten epochs of ~0.15 s: the kill after epoch 2 has a second of slack on a busy machine.
RESUME = {"batch_size": 10, "epochs": 10}


# --------------------------------------------------------------------------- helpers


def trainer(data_dir: Path, out: Path, **options):
    """A Trainer for these settings, built as train.py builds it (global RNG reseeded)."""
    out.mkdir(parents=True, exist_ok=True)
    params, setup = train_py.parse_args(cli(data_dir, out, **options))
    return Trainer(params, setup, SingleProcessEngine([CPU, CPU]))


def timeless(history: list[dict]) -> list[dict]:
    drop = {"epoch_seconds", "samples_per_second"}
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


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


def test_epochs_csv_holds_the_trainer_history_exactly(synthetic_data, tmp_path, torch_state):
    """The file's floats are repr()s: they read back as the very values the trainer had."""
    t = trainer(synthetic_data, tmp_path / "run", epochs=2)
    table = runfiles.EpochTable(tmp_path / "run" / "epochs.csv", [])
    for _ in range(2):
        assert t.run_epoch_batches(NEVER)
        table.append(t.finish_epoch())
    assert (tmp_path / "run" / "epochs.csv").read_text().splitlines()[0] == HEADER
    columns = runfiles.read_epochs(tmp_path / "run" / "epochs.csv")
    assert columns["epoch"] == [1, 2]
    for key in HEADER.split(",")[1:]:
        assert columns[key] == [row[key] for row in t.history], key
    accuracy = t.history[-1]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and accuracy * 500 == round(accuracy * 500)


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
    assert set(state) == POSITION_KEYS
    shards = out / f"checkpoint.{state['shards']}.dcp"
    # Beside it at most the next one, if the kill came before it was complete or named.
    assert shards.name in [p.name for p in out.glob("checkpoint.*.dcp")]
    stored = FileSystemReader(shards).read_metadata().state_dict_metadata
    assert sorted(stored) == sorted(
        f"{kind}.layers.{j}.{p}{key}"
        for j in (0, 1)
        for p in ("weight", "bias")
        for kind, key in [("model", ""), *[("optimizer", f".{k}") for k in ADAM_STATE]]
    )
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
    assert not checkpoint.exists() and not list(out.glob("checkpoint.*"))
    info = json.loads((out / "run.json").read_text())
    attempts = info["attempts"]
    assert [a["start_epoch"] for a in attempts] == [1, state["epoch"] + 1]
    assert attempts[0]["started"] == state["attempts"][0]["started"]
    assert "finished" not in attempts[0] and "finished" in attempts[1]
    # The killed attempt's last checkpoint (after epoch 2 or later) is its measured end
    # (times to the second: all three may fall in one).
    assert attempts[0]["started"] <= attempts[0]["checkpointed"] <= attempts[1]["started"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_with_a_checkpoint_and_resume_is_exact(runs, synthetic_data, tmp_path, sig):
    """SIGHUP (a closed terminal) stops a run like SIGTERM: with its checkpoint."""
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
                proc.send_signal(sig)
                break
        rest, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    stdout = "".join(seen) + rest
    assert proc.returncode == EXIT_RESUMABLE == 75, stdout + stderr

    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    epoch, done = state["epoch"], state["batches_done"]
    assert 1 <= epoch < RESUME["epochs"]
    assert 0 <= done < 200
    assert (
        f"stopping early: received {sig.name}. Checkpoint saved at epoch {epoch + 1}, "
        f"batch {done + 1}; run again to resume (exit 75)"
    ) in stdout
    # Stopped inside an epoch: its shuffle order and the losses so far are saved.
    assert torch.equal(state["order"].sort().values, torch.arange(2000))
    losses = state["batch_losses"]
    assert losses.shape == (200,)
    assert bool((losses[:done] > 0).all()) and bool((losses[done:] == 0).all())
    assert data_rows(out) == epoch
    assert state["attempts"][0]["stopped"] == f"received {sig.name}"

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
    assert attempts[0]["stopped"] == f"received {sig.name}" and "stopped" not in attempts[1]


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
    assert resume(resumed)
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


def test_checkpoint_of_other_settings_is_set_aside_naming_the_difference(runs):
    run = runs["repeat"]
    result = run.ok()
    checkpoint = run.out / "checkpoint.pt"
    assert (
        f"checkpoint {checkpoint} belongs to other settings or data (params.lr: 0.02 (now "
        f"0.01)); moved it aside to {checkpoint}.bad and starting from scratch"
    ) in result.stdout
    assert "resuming" not in result.stdout
    kept = torch.load(f"{checkpoint}.bad", map_location="cpu", weights_only=True)
    assert kept["fingerprint"]["params"]["lr"] == 0.02 and kept["epoch"] == 1
    runs["ref"].ok()
    assert metric_lines(run.out) == metric_lines(runs["ref"].out)
    assert_same_tensors(
        load_weights(run.out / "model.pt"), load_weights(runs["ref"].out / "model.pt")
    )
    assert len(json.loads((run.out / "run.json").read_text())["attempts"]) == 1
    assert not checkpoint.exists()


def test_a_final_checkpoint_resumes_straight_to_the_outputs(runs, synthetic_data, tmp_path):
    """A folder where model.pt goes: the first attempt trains every epoch, cannot write its
    outputs (exit 2, naming the file, no traceback) and keeps the checkpoint saved after
    the last epoch; once the folder is gone the next attempt trains nothing and writes
    the uninterrupted run's outputs."""
    out = tmp_path / "run"
    (out / "model.pt").mkdir(parents=True)
    args = cli(synthetic_data, out)
    first = run_train(out, args)
    assert first.returncode == 2, first.stdout + first.stderr
    assert f"error: cannot write {out / 'model.pt'}: Is a directory" in first.stderr
    assert "Traceback" not in first.stderr
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (3, 0)

    (out / "model.pt").rmdir()
    second = run_train(out, args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming from {out / 'checkpoint.pt'}: all 3 epochs done; writing" in second.stdout
    runs["ref"].ok()
    assert metric_lines(out) == metric_lines(runs["ref"].out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(runs["ref"].out / "model.pt"))
    assert not (out / "checkpoint.pt").exists()
    attempts = json.loads((out / "run.json").read_text())["attempts"]
    assert [a["start_epoch"] for a in attempts] == [1, 4]


def test_a_full_disk_is_a_permanent_failure_naming_the_file(synthetic_data, tmp_path):
    """A file size limit below the checkpoint's size stands in for a full disk (the write
    fails the same way, partway through): exit 2, never requeued, no traceback, and no
    temporary file left behind."""
    out = tmp_path / "run"
    limit = 300_000  # epochs.csv fits; the checkpoint (1.9 MB) does not

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *cli(synthetic_data, out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        preexec_fn=limit_file_size,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: cannot write {out / 'checkpoint.1.dcp'}: File too large after " in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not list(out.glob(".*.tmp-*"))
    assert data_rows(out) == 1


def test_the_other_settings_differ_only_in_lr(synthetic_data, tmp_path, torch_state):
    a = trainer(synthetic_data, tmp_path / "a")
    b = trainer(synthetic_data, tmp_path / "b", lr=0.02)
    assert {k for k in a.params if a.params[k] != b.params[k]} == {"lr"}
    assert a.fingerprint != b.fingerprint
    assert trainer(synthetic_data, tmp_path / "c").fingerprint == a.fingerprint


# ------------------------------------------------------------ 8. non-finite loss


def test_non_finite_loss_names_epoch_and_batch(synthetic_data, tmp_path, capsys, torch_state):
    """Exit 1 (never requeued: the same settings diverge again) with the message alone."""
    out = tmp_path / "run"
    assert train_py.main(cli(synthetic_data, out, lr=1e30, epochs=2)) == 1
    printed = capsys.readouterr()
    assert printed.err == (
        "error: non-finite training loss (nan) at epoch 1, batch 2 of 20; "
        "try a smaller train.lr or check the data\n"
    )
    assert "Epoch [1/2]" not in printed.out
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
    assert info["setup"]["devices"] == ["cpu", "cpu"]
    assert info["params"]["devices"] == "auto"
    assert epoch_column(out) == [1]


# ---------------------------------------------------------------- 10. run.json


def test_run_json_provenance(runs, synthetic_data):
    runs["ref"].ok()
    out = runs["ref"].out
    info = json.loads((out / "run.json").read_text())
    runfiles.check_record(info, out / "run.json")  # it follows workflow/schemas/run.schema.yaml
    assert info["format"] == 2
    assert info["params"] == {**settings.defaults()["train"], "devices": ["cpu"] * 2, "epochs": 3}
    assert info["run_id"] == "ref"
    assert info["swept"] == []
    setup = info["setup"]
    assert setup["threads"] == 1
    assert setup["data_dir"] == str(synthetic_data)
    assert setup["devices"] == ["cpu", "cpu"]
    assert setup["train_step"] == "KernelStep"
    assert setup["signal_seconds"] == 90.0
    expected_md5 = {name: md5_of(synthetic_data / name) for name in idx.FILE_NAMES}
    assert setup["data_md5"] == expected_md5
    assert idx.read_md5_file(synthetic_data / "MD5SUMS") == expected_md5
    assert setup["determinism"]["deterministic_algorithms"] is True
    assert setup["determinism"]["cudnn_benchmark"] is False
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert info["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert isinstance(info["git"]["dirty"], bool) or info["git"]["commit"] is None
    assert info["git"]["code_digest"] == checkpoint.code_digest()  # what verify compares
    (attempt,) = info["attempts"]
    assert attempt["start_epoch"] == 1 and "stopped" not in attempt
    assert attempt["versions"]["torch"] == torch.__version__
    assert attempt["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert attempt["hostname"] == socket.gethostname()
    started = dt.datetime.fromisoformat(attempt["started"])
    finished = dt.datetime.fromisoformat(attempt["finished"])
    assert started.tzinfo is not None and started <= finished
    assert len(attempt["device_names"]) == 2
    assert attempt["cpu_name"] == attempt["device_names"][0]  # both stages on the CPU
    assert attempt["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert attempt["cuda_visible_devices"] == ""
    assert attempt["slurm"] is None
    # Each fact once: nothing of the attempts is copied to the top level.
    assert set(info) == {"format", "run_id", "params", "swept", "setup", "git", "attempts"}


# ---------------------------------------------------------- 11. CLI and scaling


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_py.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    for flag in ("--data-dir", "--devices", "--microbatches", "--tutorial-double-scaling"):
        assert flag in out


def test_help_and_a_bad_argument_answer_before_torch_is_imported(tmp_path):
    """torch takes seconds to import: train.py's help and its argument errors come first."""
    code = (
        f"import sys; sys.path.insert(0, {str(TRAIN_SCRIPT.parent)!r}); import train\n"
        "for argv in (['--help'], ['--data-dir', 'd', '--out-dir', 'o', '--epochs', '0']):\n"
        "    try:\n"
        "        train.parse_args(argv)\n"
        "    except SystemExit as stop:\n"
        "        print(stop.code, file=sys.stderr)\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True
    )
    lines = result.stderr.splitlines()
    assert "error: argument --epochs: train.epochs: 0 is less than the minimum of 1" in (
        result.stderr
    )
    assert [lines[i] for i in (0, -2, -1)] == ["0", "2", "False"], result.stderr


def test_more_microbatches_than_batch_rows_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_py.parse_args(cli(tmp_path, tmp_path, batch_size=4, microbatches=5))
    assert exit_info.value.code == 2
    assert "train.microbatches (5) exceeds train.batch_size (4)" in capsys.readouterr().err


@pytest.mark.parametrize("double", [False, True])
def test_batches_are_scaled_like_the_tutorial(synthetic_data, tmp_path, torch_state, double):
    options = {"tutorial_double_scaling": True} if double else {}
    t = trainer(synthetic_data, tmp_path / "run", **options)
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    x, y = t.batches(order[:100], order[:100])
    expected_x, expected_y = train_batch(synthetic_data, order[:100].numpy(), double_scaling=double)
    assert torch.equal(x, expected_x.flatten(1))
    assert torch.equal(y, expected_y)
    one_255th = torch.tensor(1 / 255, dtype=torch.float32)
    assert bool(x.max() <= one_255th) == double
    # evaluation scales the test images the same way
    images, labels = idx.load_split(synthetic_data, "test")
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


# ------------------------------------------------------------ 13. data checked


def copy_data(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in [*idx.FILE_NAMES, idx.MANIFEST]:
        (dest / name).write_bytes((source / name).read_bytes())
    return dest


def test_a_data_file_with_another_md5_is_named_and_set_aside(synthetic_data, tmp_path):
    """A valid IDX file with other bytes (here the test labels in place of the train
    labels' sum) must not train: exit 2, the file named and moved aside for re-fetching."""
    data = copy_data(synthetic_data, tmp_path / "data")
    swapped = data / "train-labels-idx1-ubyte.gz"
    idx.write_idx(swapped, np.zeros(2000, np.uint8))
    out = tmp_path / "run"
    args = cli(data, out, epochs=1) + ["--md5-file", str(data / idx.MANIFEST)]
    result = run_train(out, args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: {swapped} has MD5 ")
    assert "config key data.md5" in result.stderr and "run the workflow again" in result.stderr
    assert "Traceback" not in result.stderr
    assert not swapped.exists() and (data / f"{swapped.name}.bad-md5").is_file()
    assert not (out / "epochs.csv").exists() and not (out / "run.json").exists()


def test_a_garbage_file_with_the_expected_md5_is_an_error_not_a_traceback(synthetic_data, tmp_path):
    data = copy_data(synthetic_data, tmp_path / "data")
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(b"not an IDX file")
    sums = idx.verify_data(data, None)  # the sums as they are: the check passes
    (data / "sums").write_text(idx.md5_file_text(sums))
    out = tmp_path / "run"
    result = run_train(out, cli(data, out, epochs=1) + ["--md5-file", str(data / "sums")])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "t10k-images-idx3-ubyte.gz" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------- 14. one writer, nothing partial taken


def test_a_second_process_on_the_same_run_folder_is_refused(runs, synthetic_data, tmp_path):
    """While another process (here: this one) trains in a run folder, a second train.py
    there stops at once, naming the holder; the lock goes with its holder."""
    out = tmp_path / "busy"
    out.mkdir()
    args = cli(synthetic_data, out)
    with files.exclusive_lock(out / runfiles.LOCK_FILE, f"run folder {out}"):
        second = run_train(out, args)
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.startswith(
        f"error: run folder {out} is being written by process {os.getpid()} on "
    )
    assert not (out / "epochs.csv").exists()
    run_train(out, args).check_returncode()  # the holder is gone: the run goes ahead
    runs["ref"].ok()
    assert metric_lines(out) == metric_lines(runs["ref"].out)


def test_a_table_another_process_wrote_to_is_not_taken_as_finished(
    synthetic_data, tmp_path, torch_state
):
    t = trainer(synthetic_data, tmp_path / "run", epochs=2)
    path = tmp_path / "run" / "epochs.csv"
    with runfiles.EpochTable(path, []) as table:
        for _ in range(2):
            assert t.run_epoch_batches(NEVER)
            table.append(t.finish_epoch())
        table.check(t.history)  # as written: fine
        with open(path, "a") as intruder:
            intruder.write(path.read_text().splitlines()[-1] + "\n")  # epoch 2 again
        with pytest.raises(runfiles.RunFileError, match="another process wrote to it"):
            table.check(t.history)


def bogus_checkpoints(synthetic_data, tmp_path, real: Trainer) -> dict:
    """Files at checkpoint.pt that load but are not a checkpoint of ``real``'s run; the
    shards they name are laid beside them by lay_down."""
    other = trainer(synthetic_data, tmp_path / "other", hidden_sizes=[50])
    other.shards = 41  # saved as checkpoint.42.dcp
    other.save_checkpoint()
    real.save_checkpoint()  # checkpoint.1.dcp
    shards = tmp_path / "shards"
    for saved in (
        real.setup.out_dir / "checkpoint.1.dcp",
        other.setup.out_dir / "checkpoint.42.dcp",
    ):
        shutil.copytree(saved, shards / saved.name)
    mine = real.position_state()
    return {
        "a list": ([1, 2, 3], "is not a training checkpoint of this workflow"),
        "a tensor": (torch.zeros(3), "is not a training checkpoint of this workflow"),
        "wrong shapes": (
            {**other.position_state(), "fingerprint": real.fingerprint},
            "does not fit this model",
        ),
        "lost shards": ({**mine, "shards": 7}, "has lost its shards"),
        "an epoch past the end": ({**mine, "epoch": 7}, "has epoch 7, outside this run's 0..3"),
        "batches after the last epoch": (
            {**mine, "epoch": 3, "batches_done": 5},
            "has 5 batches done after the run's last epoch",
        ),
        "an older format": (
            {**mine, "fingerprint": "9f86d081884c7d65"},
            "was written by an older version of this workflow",
        ),
        "one file, before the shards": (
            {k: v for k, v in mine.items() if k != "shards"} | {"model": {}, "optimizer": {}},
            "was written by an older version of this workflow (in one file)",
        ),
    }


def lay_down(state, tmp_path: Path, out: Path) -> None:
    """``state`` as out/checkpoint.pt, beside the shards bogus_checkpoints saved."""
    for saved in (tmp_path / "shards").iterdir():
        shutil.rmtree(out / saved.name, ignore_errors=True)
        shutil.copytree(saved, out / saved.name)
    torch.save(state, out / "checkpoint.pt")


def test_a_checkpoint_that_is_not_ours_is_reported_and_set_aside(
    synthetic_data, tmp_path, capsys, torch_state
):
    out = tmp_path / "run"
    real = trainer(synthetic_data, out)
    for name, (state, why) in bogus_checkpoints(synthetic_data, tmp_path, real).items():
        lay_down(state, tmp_path, out)
        fresh = trainer(synthetic_data, out)
        resume(fresh)
        assert why in capsys.readouterr().out, name
        assert not real.checkpoint_path.exists(), name
        assert (out / "checkpoint.pt.bad").is_file(), name
        assert not list(out.glob("checkpoint.*.dcp")), name  # set aside with it, or deleted
        assert (fresh.epoch, fresh.batches_done) == (0, 0), name


def test_a_run_next_to_a_checkpoint_that_does_not_fit_ends_as_a_fresh_run(
    runs, synthetic_data, tmp_path, torch_state
):
    out = tmp_path / "run"
    real = trainer(synthetic_data, out)
    state, _ = bogus_checkpoints(synthetic_data, tmp_path, real)["wrong shapes"]
    lay_down(state, tmp_path, out)
    result = run_train(out, cli(synthetic_data, out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not fit this model" in result.stdout
    runs["ref"].ok()
    assert metric_lines(out) == metric_lines(runs["ref"].out)
    assert_same_tensors(load_weights(out / "model.pt"), load_weights(runs["ref"].out / "model.pt"))


def test_running_out_of_memory_is_a_message_with_the_memory_needed(synthetic_data, tmp_path):
    """A model too large for the memory the process may use (here a 4 GB address-space
    limit) ends with exit 2 and what it needs, not with an allocator traceback."""
    out = tmp_path / "run"
    command = [sys.executable, str(TRAIN_SCRIPT), *cli(synthetic_data, out, hidden_sizes=[400_000])]
    result = subprocess.run(
        ["bash", "-c", 'ulimit -v 4000000 && exec "$@"', "limited", *command],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: out of memory (")
    assert "This run needs at least 6,074 MB" in result.stderr
    assert "resources.train_model_parallel.mem_mb" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_gpu_out_of_memory_names_gpu_memory_not_mem_mb(
    synthetic_data, tmp_path, monkeypatch, capsys, torch_state
):
    """CUDA's out-of-memory error (what torch raises when a stage's GPU is full) is a
    permanent failure whose advice is about GPU memory: mem_mb (host memory) cannot help."""

    def full_gpu(*args):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 1.06 GiB is free."
        )

    monkeypatch.setattr("fmnist.engine.trainer.train", full_gpu)  # train.py imports it late
    with pytest.raises(SystemExit) as exit_:
        train_py.main(cli(synthetic_data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: GPU out of memory (CUDA out of memory. Tried to allocate")
    assert "split the model over more GPUs (train.devices, train.stage_split)" in err
    assert "mem_mb is host memory and does not help" in err
    assert "raise resources.train_model_parallel.mem_mb" not in err


def test_peak_memory_has_a_column_per_gpu_of_the_layout(monkeypatch):
    """Under CUDA's rules (the stand-in): one column per distinct GPU, named by its index."""
    fake_cuda(monkeypatch, 2)
    engine = SingleProcessEngine([torch.device(d) for d in ("cuda:1", "cuda:0", "cpu")])
    assert engine.peak_memory() == {"peak_memory_mb_cuda0": 1.0, "peak_memory_mb_cuda1": 2.0}


# ------------------------------------------------------------------ 12. N stages


def test_three_stages_train_bitwise_like_one_stage_end_to_end(synthetic_data, tmp_path):
    """train.py with a three-layer relu model on three CPU stages (one device each) and on
    one stage: the same epochs.csv metrics and the same final weights, to the bit; run.json
    records three devices and the autograd step (KernelStep is for the tutorial's layout)."""
    model = {"hidden_sizes": [32, 16], "activation": "relu", "epochs": 2}
    three, one = tmp_path / "three", tmp_path / "one"
    result = run_train(three, cli(synthetic_data, three, devices=["cpu"] * 3, **model))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_train(one, cli(synthetic_data, one, devices=["cpu"], stage_split=[3], **model))
    assert result.returncode == 0, result.stdout + result.stderr
    assert metric_lines(three) == metric_lines(one)
    a, b = load_weights(three / "model.pt"), load_weights(one / "model.pt")
    assert list(a) == [f"stages.{s}.{p}" for s in (0, 1) for p in ("0.weight", "0.bias")] + [
        "stages.2.weight",
        "stages.2.bias",
    ]
    assert [tuple(t.shape) for t in a.values()] == [
        (32, 784),
        (32,),
        (16, 32),
        (16,),
        (10, 16),
        (10,),
    ]
    for x, y in zip(a.values(), b.values(), strict=True):
        assert torch.equal(x, y)
    info = json.loads((three / "run.json").read_text())
    assert info["setup"]["devices"] == ["cpu"] * 3
    assert info["setup"]["train_step"] == "AutogradStep"
    assert info["params"]["hidden_sizes"] == [32, 16] and info["params"]["stage_split"] == "flops"
    assert json.loads((one / "run.json").read_text())["setup"]["devices"] == ["cpu"]


def test_a_split_that_does_not_fit_is_refused_before_training(synthetic_data, tmp_path):
    out = tmp_path / "run"
    result = run_train(out, cli(synthetic_data, out, devices=["cpu"] * 3))
    assert result.returncode == 2
    assert "train.devices lists 3 devices, one per stage, but train.hidden_sizes [200]" in (
        result.stderr
    )
