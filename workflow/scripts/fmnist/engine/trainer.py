"""One training run, for both engines: the Trainer (state that saves and restores itself) and
the loop of an attempt.

An attempt trains until the run is finished or it is told to stop (a signal, the SLURM
deadline); then it saves a checkpoint, and the next attempt resumes exactly where it stopped,
ending with the metrics of an uninterrupted run. What differs between the engines (where the
model and data live, how a batch enters and leaves the pipeline, the collectives, which
process reads and writes the run folder) is the engine object the Trainer is given:
fmnist.engine.single_process.SingleProcessEngine (no collectives) or
fmnist.engine.distributed.DistributedEngine (one stage per process).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist.cluster.stop import StopRequests
from fmnist.console import log
from fmnist.data.idx import DataError, IdxFormatError, verify_data
from fmnist.engine import run_record
from fmnist.engine.batches import BatchMaker, DeviceData, scale_pixels_
from fmnist.engine.checkpoint import (
    CHECKPOINT_ERRORS,
    fingerprint,
    load_shards,
    read_position,
    save_position,
    save_shards,
    set_aside,
    shards_path,
)
from fmnist.engine.devices import DeviceError, synchronized_elapsed
from fmnist.engine.model_file import write_model
from fmnist.engine.step import make_optimizer
from fmnist.engine.timeline import window, write_timeline
from fmnist.rundir import progress, runfiles
from fmnist.rundir.files import LockedError, exclusive_lock, remove_stale_temporaries

EVAL_CHUNK = 1000
PROGRESS_SECONDS = 60.0
"""Within an epoch, the leading process logs a progress line at most this often (a long
epoch can be followed in its log; a short one logs none)."""
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: "try again", and the next try resumes
SETUP_FAILURES = (LockedError, DataError, IdxFormatError, DeviceError, runfiles.RunFileError)
"""What running again cannot fix: every process of a run fails alike (fmnist.engine's peers)."""


@dataclass
class RunSetup:
    """What a run needs besides its training settings (none of it changes the numbers)."""

    data_dir: Path
    out_dir: Path
    threads: int
    signal_seconds: float = 90.0  # under SLURM: checkpoint and leave this long before the limit
    run_id: str | None = None
    swept: tuple[str, ...] = ()
    expected_md5: dict | None = None  # the four files' sums, checked before training
    failure_requeues: int = 0  # under SLURM: unexpected failures requeued at most
    process_group_timeout: int = 300  # distributed engine: seconds to wait for a peer
    tasks_per_node: int | None = None  # distributed engine under SLURM
    stage_process: bool = False  # this process is one stage's (started by fmnist.engine.launch)


class NonFiniteLossError(RuntimeError):
    """The loss diverged: the same settings diverge again, so this is never retried."""


class Trainer:
    """The model (or this process's stage of it), optimizer, data and position of one run;
    ``state_dict`` is its checkpoint. Its methods are collective where the engine has peers
    (every process calls them, in the same order)."""

    def __init__(self, params: dict, setup: RunSetup, engine):
        self.params, self.setup, self.engine = params, setup, engine
        self.devices = engine.devices
        self.checkpoint_path = setup.out_dir / runfiles.CHECKPOINT_FILE
        if engine.leads:
            remove_stale_temporaries(setup.out_dir)  # left by a kill mid-write
        self.data_md5 = verify_data(setup.data_dir, setup.expected_md5)
        self.fingerprint = fingerprint(params, self.devices, self.data_md5, engine.ranks)
        image_device, label_device = engine.data_devices
        self.train_data = DeviceData(setup.data_dir, "train", image_device, label_device)
        self.test_data = DeviceData(setup.data_dir, "test", image_device, label_device)
        batch_size = params["batch_size"]
        self.batches = BatchMaker(self.train_data, batch_size, params["tutorial_double_scaling"])
        self.num_batches = math.ceil(len(self.train_data) / batch_size)
        engine.check_batches(len(self.train_data), params)

        torch.manual_seed(params["seed"])
        self.model = engine.build_model(params)
        self.optimizer = make_optimizer(self.model, params)
        self.layers = engine.layer_parameters(self.model, params)  # what this process saves
        self.shards = 0  # the number of the checkpoint's shards folder (0: none yet)
        self.step = engine.make_step(self.model, self.optimizer, params)
        self.shuffle = torch.Generator().manual_seed(params["seed"])
        self.history: list[dict] = []
        self.attempts: list[dict] = []
        # Where the current epoch stands: its order, losses so far, time spent.
        self.epoch = 0
        self.order = None
        self.batch_losses = torch.zeros(
            self.num_batches, dtype=torch.float32, device=engine.loss_device
        )
        self.batches_done = 0
        self.epoch_seconds_so_far = 0.0
        self.timeline_rows: list[dict] = []  # timeline.csv, once its window has run

    # -- checkpoint state --------------------------------------------------
    def position_state(self) -> dict:
        """The checkpoint but the weights and the optimizer: where the run stands."""
        return {
            "fingerprint": self.fingerprint,
            "shards": self.shards,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "epoch": self.epoch,
            "order": None if self.order is None else self.order.cpu(),
            "batch_losses": self.batch_losses.cpu(),
            "batches_done": self.batches_done,
            "epoch_seconds_so_far": self.epoch_seconds_so_far,
            "history": self.history,
            "attempts": self.attempts,
            "timeline": self.timeline_rows,
        }

    def load_position(self, state: dict) -> None:
        """Take up the run where a checkpoint's position_state says it stands."""
        self.shards = state["shards"]
        torch.set_rng_state(state["torch_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.epoch = state["epoch"]
        self.order = state["order"]
        self.batch_losses.copy_(state["batch_losses"])
        self.batches_done = state["batches_done"]
        self.epoch_seconds_so_far = state["epoch_seconds_so_far"]
        self.history = list(state["history"])
        self.attempts = list(state["attempts"])
        self.timeline_rows = list(state["timeline"])

    def save_checkpoint(self) -> None:
        """Every process saves its shard into a new folder; then the leading process writes
        checkpoint.pt naming it, and only then deletes the previous one."""
        if self.attempts:  # what a killed attempt's compute is measured by
            self.attempts[-1]["checkpointed"] = run_record.now()
            self.note_peak_memory()
        self.engine.share_losses(self.batch_losses)  # the epoch's losses so far
        self.shards += 1
        save_shards(shards_path(self.setup.out_dir, self.shards), self.layers, self.optimizer)
        if self.engine.leads:
            save_position(self.checkpoint_path, self.position_state())
            progress.write_position(self.setup.out_dir, self.position())
            runfiles.remove_shards(
                self.setup.out_dir, keep=runfiles.shards_folder_name(self.shards)
            )

    def position(self) -> progress.Position:
        """Where the run stands, for status.py (checkpoint.json: it reads no torch file)."""
        return progress.Position(
            self.epoch,
            self.params["epochs"],
            self.batches_done,
            self.num_batches,
            self.epoch_seconds_so_far,
            tuple(a["stopped"] for a in self.attempts if a.get("stopped")),
            run_record.now(),
            self.history[-1]["test_accuracy"] if self.history else None,
            statistics.fmean(r["epoch_seconds"] for r in self.history) if self.history else None,
        )

    def note_peak_memory(self) -> None:
        """Each process's peak resident memory so far in this attempt, in its record."""
        self.attempts[-1]["peak_rss_mb"] = self.engine.gather_peak_rss()

    # -- epochs ------------------------------------------------------------
    def run_epoch_batches(self, stop: StopRequests) -> bool:
        """Train the rest of the current epoch; False if asked to stop first."""
        if self.order is None:
            self.order = torch.randperm(len(self.train_data), generator=self.shuffle)
        size = self.params["batch_size"]
        image_batches = self.order.to(self.train_data.images.device).split(size)
        label_batches = self.order.to(self.train_data.labels.device).split(size)
        losses = self.batch_losses.unbind()  # each step writes its loss into its slot
        engine, recorded = self.engine, window(self.num_batches)
        self.model.train()
        started = time.perf_counter()
        first, next_line = self.batches_done, started + PROGRESS_SECONDS
        for b in range(self.batches_done, self.num_batches):
            if engine.agree_to_stop(stop):
                self.batches_done = b
                self.epoch_seconds_so_far += synchronized_elapsed(started, engine.own_devices)
                self.end_timeline(keep=False)  # a window cut short is recorded again
                return False
            if b in recorded and not self.timeline_rows:
                self.record_timeline(b, recorded)
            engine.run_step(self.step, self.batches, image_batches[b], label_batches[b], losses[b])
            if self.step.timeline is not None and b == recorded[-1]:
                self.end_timeline(keep=True)
            if engine.leads and (now := time.perf_counter()) >= next_line:
                next_line = now + PROGRESS_SECONDS
                self.log_progress(b + 1, first, now - started)
        self.batches_done = self.num_batches
        self.epoch_seconds_so_far += synchronized_elapsed(started, engine.own_devices)
        return True

    def log_progress(self, done: int, first: int, seconds: float) -> None:
        """The progress line once ``done`` of the epoch's batches are, ``first`` of them
        before this attempt's ``seconds`` (timed without a synchronisation: over seconds,
        the devices' queues hold the host to their pace)."""
        size, samples = self.params["batch_size"], len(self.train_data)
        rate = (min(samples, done * size) - first * size) / seconds
        left = max(0, samples - done * size) / rate
        epoch, epochs = self.epoch + 1, self.params["epochs"]
        log(progress.progress_line(epoch, epochs, done, self.num_batches, rate, left))

    def record_timeline(self, batch: int, recorded: range) -> None:
        """Start the Timeline at the window's first batch (a window resumed in its middle
        is left for the next epoch), and tell it which of its steps comes."""
        if batch == recorded.start:
            self.step.timeline = self.engine.start_timeline()
        if self.step.timeline is not None:
            self.step.timeline.step = batch - recorded.start

    def end_timeline(self, keep: bool) -> None:
        timeline, self.step.timeline = self.step.timeline, None
        if timeline is not None:
            rows = self.engine.gather_timeline(timeline.rows() if keep else [])
            if keep:
                self.timeline_rows = rows

    def check_finite(self) -> None:
        finite = torch.isfinite(self.batch_losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"non-finite training loss ({self.batch_losses[bad].item()}) at epoch "
                f"{self.epoch + 1}, batch {bad + 1} of {self.num_batches}; "
                "try a smaller train.lr or check the data"
            )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean test loss and accuracy, the test set sent through the stages in chunks."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        double_scaling, test = self.params["tutorial_double_scaling"], self.test_data
        for start in range(0, len(test), EVAL_CHUNK):
            pixels = test.images[start : start + EVAL_CHUNK].to(torch.float32)
            labels = test.labels[start : start + EVAL_CHUNK]
            out = self.engine.forward(self.model, scale_pixels_(pixels, double_scaling))
            if out is not None:  # where the output leaves the pipeline
                loss_sum += F.cross_entropy(out, labels, reduction="sum").item()
                correct += int((out.argmax(dim=1) == labels).sum())
        loss_sum, correct = self.engine.share_totals(loss_sum, correct)
        return loss_sum / len(test), correct / len(test)

    def finish_epoch(self) -> dict:
        self.engine.share_losses(self.batch_losses)
        self.check_finite()
        # The tutorial sums Python floats batch by batch, then divides.
        train_loss = sum(self.batch_losses.tolist()) / self.num_batches
        test_loss, test_accuracy = self.evaluate()
        seconds = self.epoch_seconds_so_far
        row = {
            "epoch": self.epoch + 1,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "epoch_seconds": seconds,
            "samples_per_second": len(self.train_data) / seconds,
            **self.engine.peak_memory(),
        }
        self.history.append(row)
        self.epoch += 1
        self.order, self.batches_done, self.epoch_seconds_so_far = None, 0, 0.0
        self.batch_losses.zero_()
        return row

    # -- outputs -----------------------------------------------------------
    def record(self) -> dict:
        """run.json for the finished run (workflow/schemas/run.schema.yaml)."""
        return {
            "format": run_record.RECORD_FORMAT,
            "run_id": self.setup.run_id or self.setup.out_dir.name,
            "params": self.params,
            "swept": list(self.setup.swept),
            "setup": {
                "devices": [str(d) for d in self.devices],
                "train_step": self.engine.step_name(self.step),
                "threads": torch.get_num_threads(),
                "signal_seconds": self.setup.signal_seconds,
                "data_dir": str(self.setup.data_dir),
                "data_md5": self.data_md5,
                "determinism": run_record.determinism(),
                **self.engine.record_setup(),
            },
            # What verify compares: a dirty tree (an edited config) is not other code.
            "git": {**run_record.git_state(), "code_digest": self.fingerprint["code"]},
            "attempts": self.attempts,
        }

    def write_outputs(self) -> None:
        """model.pt (from the checkpoint saved after the last epoch), timeline.csv and
        run.json, written last by the leading process."""
        # Training is over and its state is on disk (the last checkpoint): the gradients'
        # and Adam's memory goes to writing model.pt instead of adding to it.
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()
        if self.engine.leads:
            shards = shards_path(self.setup.out_dir, self.shards)
            write_model(self.setup.out_dir / runfiles.MODEL_FILE, shards, self.params)
        self.note_peak_memory()  # the whole attempt's, writing model.pt included
        if self.engine.leads:
            write_timeline(self.setup.out_dir, self.timeline_rows)
            runfiles.write_record(self.setup.out_dir, self.record())


def log_epoch(row: dict, epochs: int) -> None:
    log(f"Epoch [{row['epoch']}/{epochs}], Loss: {row['train_loss']:.4f}")
    log(
        f"    test_loss {row['test_loss']:.4f}  test_accuracy {100 * row['test_accuracy']:.2f}%  "
        f"{row['epoch_seconds']:.2f} s  {row['samples_per_second']:.0f} samples/s"
    )


def configure_determinism(threads: int) -> None:
    """Deterministic kernels and a fixed thread count: same settings, same bits. Call it
    before anything runs on a GPU: cuBLAS reads its workspace setting when it starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)


def position_error(trainer: Trainer, state: dict) -> str | None:
    """Why ``state`` cannot be a position of this run (None if it can)."""
    epoch, done, epochs = state["epoch"], state["batches_done"], trainer.params["epochs"]
    # Epoch == epochs: the checkpoint saved after the last epoch, before the outputs.
    if not (isinstance(epoch, int) and 0 <= epoch <= epochs):
        return f"has epoch {epoch!r}, outside this run's 0..{epochs}"
    if not (isinstance(done, int) and 0 <= done <= trainer.num_batches):
        return f"has {done!r} batches done, outside 0..{trainer.num_batches}"
    if epoch == epochs and done:
        return f"has {done!r} batches done after the run's last epoch"
    if not isinstance(state["history"], list) or len(state["history"]) != epoch:
        return f"holds {len(state['history'])} epochs of history for epoch {epoch}"
    order, losses = state["order"], state["batch_losses"]
    if order is not None and tuple(getattr(order, "shape", ())) != (len(trainer.train_data),):
        return "has a shuffle order of another size than the training set"
    if tuple(getattr(losses, "shape", ())) != (trainer.num_batches,):
        return "has batch losses for another number of batches"
    return None


def read_checkpoint(trainer: Trainer) -> dict | None:
    """The run's checkpoint if there is one of ours at a position of this run, else None
    (anything else there is reported and set aside)."""
    state = read_position(trainer.checkpoint_path, trainer.fingerprint)
    why = position_error(trainer, state) if state is not None else None
    if why is not None:
        set_aside(trainer.checkpoint_path, why)
        return None
    return state


def resume(trainer: Trainer) -> bool:
    """Load the run's checkpoint if there is one of ours: the leading process reads its
    position and shares it, each process loads its own layers from the shards (whatever the
    layout that saved them). False, in every process, if it had to be set aside after it
    was partly loaded (the trainer must then be built again)."""
    engine = trainer.engine
    position = engine.share_position(read_checkpoint(trainer) if engine.leads else None)
    if position is None:
        return True
    failure = None
    try:
        shards = shards_path(trainer.setup.out_dir, position["shards"])
        load_shards(shards, trainer.layers, trainer.optimizer)
        trainer.load_position(position)
    except CHECKPOINT_ERRORS as err:
        failure = err
        log(f"{engine.name}: the checkpoint does not fit ({err})")
    if not engine.all_succeeded(failure is None):
        if engine.leads:
            why = failure or "another stage's process could not load its part"
            set_aside(trainer.checkpoint_path, f"does not fit this model ({why})")
        return False
    log(f"resuming from {trainer.checkpoint_path}: {position_text(trainer)}")
    return True


def position_text(trainer: Trainer) -> str:
    if trainer.epoch == trainer.params["epochs"]:
        return f"all {trainer.epoch} epochs done; writing the outputs"
    return f"epoch {trainer.epoch + 1}, batch {trainer.batches_done + 1}"


def train_attempt(trainer: Trainer, stop: StopRequests, attempt: dict, table) -> bool:
    """Train until the run is finished (True) or ``stop`` says so (False, checkpoint saved).
    ``table`` is the run's EpochTable, or None in a process that does not write it."""
    epochs = trainer.params["epochs"]
    for row in trainer.history:
        log_epoch(row, epochs)
    while trainer.epoch < epochs:
        if not trainer.run_epoch_batches(stop):
            attempt.update(finished=run_record.now(), stopped=stop.reason)
            trainer.save_checkpoint()
            log(
                f"stopping early: {stop.reason}. Checkpoint saved at epoch {trainer.epoch + 1}, "
                f"batch {trainer.batches_done + 1}; run again to resume (exit {EXIT_RESUMABLE})"
            )
            return False
        row = trainer.finish_epoch()
        if table is not None:
            table.append(row)
        log_epoch(row, epochs)
        trainer.save_checkpoint()
    if table is not None:
        table.check(trainer.history)
    log("Training finished.")
    attempt["finished"] = run_record.now()
    return True


def start(params: dict, setup: RunSetup, engine, held: contextlib.ExitStack) -> Trainer:
    """The trainer, once every process could build its own: the leading process takes the
    run folder's lock; a failure that running again cannot fix (a busy run folder, bad data)
    ends every process alike, instead of leaving the others to fail on a closed connection."""
    failure, trainer = None, None
    try:
        if engine.leads:
            setup.out_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(
                exclusive_lock(setup.out_dir / runfiles.LOCK_FILE, f"run folder {setup.out_dir}")
            )
        trainer = Trainer(params, setup, engine)
    except SETUP_FAILURES as err:
        failure = err
    engine.agree_on_setup(failure)
    return trainer


def train(params: dict, setup: RunSetup, engine) -> bool:
    """One attempt at the run by this process: True once it is finished."""
    started = run_record.now()
    with contextlib.ExitStack() as held:
        trainer = start(params, setup, engine, held)
        if not resume(trainer):
            trainer = Trainer(params, setup, engine)  # nothing half-loaded carries on
        attempt = run_record.attempt_record(started, trainer.epoch + 1, trainer.devices)
        attempt |= engine.attempt_record()
        trainer.attempts.append(attempt)
        epochs_path = setup.out_dir / runfiles.EPOCHS_FILE
        with (
            StopRequests(setup.signal_seconds, watch_deadline=engine.leads) as stop,
            runfiles.EpochTable(epochs_path, trainer.history)
            if engine.leads
            else contextlib.nullcontext() as table,
        ):
            finished = train_attempt(trainer, stop, attempt, table)
        if finished:
            trainer.write_outputs()
        engine.finish()
        # Only once every process has confirmed: until then the outputs may not be
        # complete, and the checkpoint saved after the last epoch is what writes them again.
        if finished and engine.leads:
            runfiles.remove_checkpoint(setup.out_dir)
    return finished
