"""What training leaves for status.py: progress lines within a long epoch (the leading
process's, the numbers unchanged), and checkpoint.json beside checkpoint.pt (its position
without torch), removed with the checkpoint when the run is finished."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from fmnist.engine import trainer as trainer_module
from fmnist.engine.single_process import SingleProcessEngine
from fmnist.engine.trainer import EXIT_RESUMABLE, Trainer, resume
from fmnist.report import status
from fmnist.rundir import progress
from helpers import (
    ENV,
    NEVER,
    TIMEOUT,
    TRAIN_SCRIPT,
    StopAfter,
    assert_same_tensors,
    cli,
    import_script,
    run_train,
)

train_py = import_script("train")
CPU = torch.device("cpu")
OPTIONS = {"batch_size": 100, "epochs": 2}  # 20 batches of the 2000 synthetic samples


def trainer(data_dir, out, **options) -> Trainer:
    out.mkdir(parents=True, exist_ok=True)
    params, setup = train_py.parse_args(cli(data_dir, out, **{**OPTIONS, **options}))
    return Trainer(params, setup, SingleProcessEngine([CPU, CPU]))


def progress_lines(text: str) -> list[progress.Progress]:
    lines = [progress.parse_progress(line) for line in text.splitlines() if "progress:" in line]
    assert None not in lines, text
    return lines


@pytest.fixture(autouse=True)
def one_thread(torch_state):
    torch.set_num_threads(1)


def test_a_long_epoch_logs_progress_lines_and_the_same_numbers(
    synthetic_data, tmp_path, capsys, monkeypatch
):
    """An epoch shorter than PROGRESS_SECONDS logs none; with the interval made small,
    a line after every batch, and every number as without them."""
    quiet = trainer(synthetic_data, tmp_path / "quiet")
    assert quiet.run_epoch_batches(NEVER)
    assert "progress:" not in capsys.readouterr().out

    monkeypatch.setattr(trainer_module, "PROGRESS_SECONDS", 0.0)
    loud = trainer(synthetic_data, tmp_path / "loud")
    assert loud.run_epoch_batches(NEVER)
    lines = progress_lines(capsys.readouterr().out)
    assert [line.done for line in lines] == list(range(1, 21))
    assert {(line.epoch, line.epochs, line.batches) for line in lines} == {(1, 2, 20)}
    assert all(line.samples_per_second > 0 for line in lines)
    assert lines[-1].left == 0 and lines[0].left >= lines[-2].left

    assert torch.equal(loud.batch_losses, quiet.batch_losses)
    assert_same_tensors(loud.model.state_dict(), quiet.model.state_dict())


def test_a_checkpoint_has_its_position_in_json_and_a_resumed_epoch_counts_on(
    synthetic_data, tmp_path, capsys, monkeypatch
):
    part = trainer(synthetic_data, tmp_path / "part")
    assert not part.run_epoch_batches(StopAfter(7))
    part.save_checkpoint()
    position = progress.read_position(tmp_path / "part")
    assert (position.epoch, position.epochs, position.batches_done, position.batches) == (
        0, 2, 7, 20,
    )  # fmt: skip
    assert (position.test_accuracy, position.epoch_seconds, position.stops) == (None, None, ())
    assert position.text() == "epoch 1, 7/20 batches done"

    monkeypatch.setattr(trainer_module, "PROGRESS_SECONDS", 0.0)
    resumed = trainer(synthetic_data, tmp_path / "part")
    assert resume(resumed)
    capsys.readouterr()
    assert resumed.run_epoch_batches(NEVER)
    assert [line.done for line in progress_lines(capsys.readouterr().out)] == list(range(8, 21))


def test_status_reads_a_stopped_run_and_then_its_finished_one(synthetic_data, tmp_path):
    """train.py stopped by SIGTERM leaves checkpoint.json naming the stop; the finished run
    has none left (it goes with the checkpoint)."""
    workdir = tmp_path / "wf"
    out = workdir / status.RUNS_DIR / "r"
    args = cli(synthetic_data, out, batch_size=10, epochs=4)
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args], stdout=subprocess.PIPE, env=ENV, text=True
    )
    try:
        for line in proc.stdout:  # the handlers are in place once epoch 1 is logged
            if line.startswith("Epoch [1/4]"):
                proc.send_signal(signal.SIGTERM)
                break
        proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_RESUMABLE
    position = progress.read_position(out)
    assert position.stops == ("received SIGTERM",) and position.batches == 200
    assert position.epoch >= 1 and position.epoch_seconds > 0
    assert 0 < position.test_accuracy <= 1
    params = {"epochs": 4}
    (stopped,) = status.collect({"r": params}, workdir, slurm=False).runs
    assert stopped.state == "stopped"  # no log here: train.py's output was not kept
    assert f"checkpoint at {position.text()}" in stopped.details

    assert run_train(out, args).returncode == 0
    assert not (out / progress.POSITION_FILE).exists()
    (done,) = status.collect({"r": params}, workdir, slurm=False).runs
    assert (done.state, done.epoch) == ("finished", 4)
