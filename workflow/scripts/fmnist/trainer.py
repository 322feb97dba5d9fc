"""One training run: the Trainer (state that saves and restores itself) and the loop of an attempt.

An attempt trains until the run is finished or it is told to stop (a signal, the SLURM
deadline); then it saves a checkpoint, and the next attempt resumes exactly where it
stopped, ending with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import run_record, runfiles
from .checkpoint import cpu_state, fingerprint, load_checkpoint, save_checkpoint, set_aside
from .cluster import StopWatch
from .console import log
from .data import BatchMaker, DeviceData, scale_pixels_
from .devices import synchronized_elapsed
from .files import atomic_write, exclusive_lock, remove_stale_temporaries
from .idx import verify_data
from .model import model_for
from .steps import make_optimizer, make_step
from .timeline import Timeline, window, write_timeline

EVAL_CHUNK = 1000
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: "try again", and the next try resumes
LOCK_FILE = ".train.lock"  # one training process per run folder


@dataclass
class RunSetup:
    """What a run needs besides its training settings (none of it changes the numbers)."""

    data_dir: Path
    out_dir: Path
    threads: int
    deadline_margin: float = 90.0
    run_id: str | None = None
    swept: tuple[str, ...] = ()
    expected_md5: dict | None = None  # the four files' sums, checked before training
    failure_requeues: int = 0  # under SLURM: unexpected failures requeued at most
    process_group_timeout: int = 300  # distributed engine: seconds to wait for a peer
    tasks_per_node: int | None = None  # distributed engine under SLURM
    stage_process: bool = False  # this process is one stage's (started by fmnist.launch)


class NonFiniteLossError(RuntimeError):
    """The loss diverged: the same settings diverge again, so this is never retried."""


class Trainer:
    """The model, optimizer, data and position of one run; ``state_dict`` is its checkpoint."""

    def __init__(self, params: dict, setup: RunSetup, devices: list[torch.device]):
        self.params, self.setup, self.devices = params, setup, devices
        self.checkpoint_path = setup.out_dir / runfiles.CHECKPOINT_FILE
        remove_stale_temporaries(setup.out_dir)  # left by a kill mid-write
        self.data_md5 = verify_data(setup.data_dir, setup.expected_md5)
        self.fingerprint = fingerprint(params, devices, self.data_md5)
        self.train = DeviceData(setup.data_dir, "train", devices[0], devices[-1])
        self.test = DeviceData(setup.data_dir, "test", devices[0], devices[-1])
        batch_size = params["batch_size"]
        self.batches = BatchMaker(self.train, batch_size, params["tutorial_double_scaling"])
        self.num_batches = math.ceil(len(self.train) / batch_size)

        torch.manual_seed(params["seed"])
        self.model = model_for(params, devices)
        self.optimizer = make_optimizer(self.model, params)
        self.step = make_step(self.model, self.optimizer, batch_size, params)
        self.shuffle = torch.Generator().manual_seed(params["seed"])
        self.history: list[dict] = []
        self.attempts: list[dict] = []
        # Where the current epoch stands: its order, losses so far, time spent.
        self.epoch = 0
        self.order = None
        self.batch_losses = torch.zeros(self.num_batches, dtype=torch.float32, device=devices[-1])
        self.batches_done = 0
        self.epoch_seconds_so_far = 0.0
        self.timeline_rows: list[dict] = []  # timeline.csv, once its window has run

    # -- checkpoint state --------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": cpu_state(self.model.state_dict()),
            "optimizer": cpu_state(self.optimizer.state_dict()),
            **self.position_state(),
        }

    def position_state(self) -> dict:
        """The checkpoint but the weights and the optimizer: where the run stands."""
        return {
            "fingerprint": self.fingerprint,
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

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
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
        save_checkpoint(self.checkpoint_path, self.state_dict())

    # -- epochs ------------------------------------------------------------
    def run_epoch_batches(self, stop: StopWatch) -> bool:
        """Train the rest of the current epoch; False if asked to stop first."""
        if self.order is None:
            self.order = torch.randperm(len(self.train), generator=self.shuffle)
        size = self.params["batch_size"]
        image_batches = self.order.to(self.devices[0]).split(size)
        label_batches = self.order.to(self.devices[-1]).split(size)
        losses = self.batch_losses.unbind()  # each step writes its loss into its slot
        step, batches = self.step, self.batches
        recorded = window(self.num_batches)
        self.model.train()
        started = time.perf_counter()
        for b in range(self.batches_done, self.num_batches):
            if stop.should_stop():
                self.batches_done = b
                self.epoch_seconds_so_far += synchronized_elapsed(started, self.devices)
                step.timeline = None  # a window cut short is recorded again
                return False
            if b in recorded and not self.timeline_rows:
                self.record_timeline(b, recorded)
            step(*batches(image_batches[b], label_batches[b]), losses[b])  # no host sync
            if step.timeline is not None and b == recorded[-1]:
                self.timeline_rows, step.timeline = step.timeline.rows(), None
        self.batches_done = self.num_batches
        self.epoch_seconds_so_far += synchronized_elapsed(started, self.devices)
        return True

    def record_timeline(self, batch: int, recorded: range) -> None:
        """Start the Timeline at the window's first batch (a window resumed in its middle
        is left for the next epoch), and tell it which of its steps comes."""
        if batch == recorded.start:
            self.step.timeline = Timeline(dict(enumerate(self.devices)))
        if self.step.timeline is not None:
            self.step.timeline.step = batch - recorded.start

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
        self.model.eval()
        loss_sum, correct = 0.0, 0
        double_scaling = self.params["tutorial_double_scaling"]
        for start in range(0, len(self.test), EVAL_CHUNK):
            pixels = self.test.images[start : start + EVAL_CHUNK].to(torch.float32)
            labels = self.test.labels[start : start + EVAL_CHUNK]
            out = self.model(scale_pixels_(pixels, double_scaling))
            loss_sum += F.cross_entropy(out, labels, reduction="sum").item()
            correct += int((out.argmax(dim=1) == labels).sum())
        return loss_sum / len(self.test), correct / len(self.test)

    def finish_epoch(self) -> dict:
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
            "samples_per_second": len(self.train) / seconds,
            **self.peak_memory(),
        }
        self.history.append(row)
        self.epoch += 1
        self.order, self.batches_done, self.epoch_seconds_so_far = None, 0, 0.0
        self.batch_losses.zero_()
        return row

    def peak_memory(self) -> dict:
        """Each GPU's peak memory since the last epoch, in MB."""
        peaks = {}
        for device in sorted({d for d in self.devices if d.type == "cuda"}, key=str):
            peaks[f"peak_memory_mb_cuda{device.index or 0}"] = (
                torch.cuda.max_memory_allocated(device) / 2**20
            )
            torch.cuda.reset_peak_memory_stats(device)
        return peaks

    # -- outputs -----------------------------------------------------------
    def train_step_name(self) -> str:
        return type(self.step).__name__

    def record(self) -> dict:
        """run.json for the finished run (workflow/schemas/run.schema.yaml)."""
        return {
            "format": run_record.RECORD_FORMAT,
            "run_id": self.setup.run_id or self.setup.out_dir.name,
            "params": self.params,
            "swept": list(self.setup.swept),
            "setup": {
                "devices": [str(d) for d in self.devices],
                "train_step": self.train_step_name(),
                "threads": torch.get_num_threads(),
                "deadline_margin_seconds": self.setup.deadline_margin,
                "data_dir": str(self.setup.data_dir),
                "data_md5": self.data_md5,
                "determinism": run_record.determinism(),
            },
            "git": run_record.git_state(),
            "attempts": self.attempts,
        }

    def write_outputs(self) -> None:
        write_model(self.setup.out_dir, cpu_state(self.model.state_dict()))
        write_timeline(self.setup.out_dir, self.timeline_rows)
        runfiles.write_record(self.setup.out_dir, self.record())


def write_model(out_dir: Path, weights: dict) -> None:
    """model.pt: the final weights, on the CPU, under the single-process engine's names."""
    atomic_write(out_dir / runfiles.MODEL_FILE, lambda handle: torch.save(weights, handle))


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
    epoch, done = state["epoch"], state["batches_done"]
    if not (isinstance(epoch, int) and 0 <= epoch < trainer.params["epochs"]):
        return f"has epoch {epoch!r}, outside this run's 0..{trainer.params['epochs'] - 1}"
    if not (isinstance(done, int) and 0 <= done <= trainer.num_batches):
        return f"has {done!r} batches done, outside 0..{trainer.num_batches}"
    if not isinstance(state["history"], list) or len(state["history"]) != epoch:
        return f"holds {len(state['history'])} epochs of history for epoch {epoch}"
    order, losses = state["order"], state["batch_losses"]
    if order is not None and tuple(getattr(order, "shape", ())) != (len(trainer.train),):
        return "has a shuffle order of another size than the training set"
    if tuple(getattr(losses, "shape", ())) != (trainer.num_batches,):
        return "has batch losses for another number of batches"
    return None


def resume(trainer: Trainer) -> bool:
    """Load the run's checkpoint if there is one of ours; False if one had to be set aside
    after it was partly loaded (the trainer must then be built again)."""
    state = load_checkpoint(trainer.checkpoint_path, trainer.fingerprint)
    if state is None:
        return True
    why = position_error(trainer, state)
    if why is None:
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            set_aside(trainer.checkpoint_path, f"does not fit this model ({err})")
            return False
        position = f"epoch {trainer.epoch + 1}, batch {trainer.batches_done + 1}"
        log(f"resuming from {trainer.checkpoint_path}: {position}")
        return True
    set_aside(trainer.checkpoint_path, why)
    return True


def train_attempt(trainer: Trainer, stop: StopWatch, attempt: dict, table) -> bool:
    """Train until the run is finished (True) or ``stop`` says so (False, checkpoint saved)."""
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
        table.append(row)
        log_epoch(row, epochs)
        trainer.save_checkpoint()
    table.check(trainer.history)
    log("Training finished.")
    attempt["finished"] = run_record.now()
    return True


def train(params: dict, setup: RunSetup, devices: list[torch.device]) -> bool:
    """One attempt at the run: True when it is finished, False when it stopped early."""
    started = run_record.now()
    setup.out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(setup.out_dir / LOCK_FILE, f"run folder {setup.out_dir}"):
        trainer = Trainer(params, setup, devices)
        if not resume(trainer):
            trainer = Trainer(params, setup, devices)  # nothing half-loaded carries on
        attempt = run_record.attempt_record(started, trainer.epoch + 1, devices)
        trainer.attempts.append(attempt)
        epochs_path = setup.out_dir / runfiles.EPOCHS_FILE
        with (
            StopWatch(setup.deadline_margin) as stop,
            runfiles.EpochTable(epochs_path, trainer.history) as table,
        ):
            finished = train_attempt(trainer, stop, attempt, table)
        if finished:
            trainer.write_outputs()
            trainer.checkpoint_path.unlink(missing_ok=True)
    return finished
