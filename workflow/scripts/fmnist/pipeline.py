"""The distributed engine: one process (rank) per stage, on torch.distributed.pipelining.

Rank r builds the whole model from the seed (so its weights start as the single-process
engine's do) and keeps stage r only, with its optimizer state. Activations and gradients
travel between the ranks through the process group, in the order ScheduleGPipe or
Schedule1F1B gives them; the loss and its arithmetic are the single-process engine's
(model.microbatch_loss, gradients not rescaled), so both engines give the same bits.

Rank 0 coordinates: it holds the run-folder lock, writes epochs.csv, checkpoint.pt,
timeline.csv, run.json and model.pt (the stages' parts gathered, under the single-process
names). The last rank computes the losses and sends them on. Before every step the ranks
agree whether to stop (any rank's signal, rank 0's SLURM deadline), so they all stop after
the same batch.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from . import run_record, runfiles
from .checkpoint import cpu_state, fingerprint, load_checkpoint, save_checkpoint, set_aside
from .cluster import StopWatch
from .console import log
from .data import BatchMaker, DeviceData, scale_pixels_
from .devices import DeviceError, synchronized_elapsed
from .files import LockedError, exclusive_lock, remove_stale_temporaries
from .idx import DataError, IdxFormatError, verify_data
from .model import microbatch_loss, model_for
from .ranks import RankContext
from .runfiles import RunFileError
from .steps import make_optimizer
from .timeline import Timeline, window, write_timeline
from .trainer import EVAL_CHUNK, LOCK_FILE, Trainer, position_error, train_attempt, write_model

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
CPU = torch.device("cpu")


class StageLoss:
    """The schedules' loss_fn: microbatch_loss for a batch of ``rows`` rows."""

    def __init__(self, microbatches: int):
        self.microbatches, self.rows = microbatches, 0

    def __call__(self, output, target):
        return microbatch_loss(output, target, self.rows, self.microbatches)


def check_last_batch(rows: int, batch_size: int, microbatches: int) -> None:
    """Every micro-batch of a step has one shape (a stage is set up for one), so the last,
    shorter batch must split evenly too (train.batch_size % microbatches is checked earlier)."""
    last = rows % batch_size
    if last % microbatches:
        raise DataError(
            f"the training set's {rows} rows leave a last batch of {last} rows, which "
            f"train.microbatches ({microbatches}) cannot split into equal micro-batches, as "
            "the distributed engine needs: choose train.batch_size or train.microbatches so "
            "that they do"
        )


class PipelineTrainer(Trainer):
    """Trainer for one stage's process; its methods are collective (every rank calls them)."""

    def __init__(self, params: dict, setup, ctx: RankContext):
        self.params, self.setup, self.ctx = params, setup, ctx
        self.rank, self.stages, self.device = ctx.rank, ctx.world_size, ctx.device
        self.first, self.last = self.rank == 0, self.rank == ctx.world_size - 1
        self.devices = ctx.devices
        self.checkpoint_path = setup.out_dir / runfiles.CHECKPOINT_FILE
        if self.first:
            remove_stale_temporaries(setup.out_dir)
        self.data_md5 = verify_data(setup.data_dir, setup.expected_md5)
        self.fingerprint = fingerprint(params, self.devices, self.data_md5, ctx.ranks)
        here = self.device if (self.first or self.last) else CPU
        self.train = DeviceData(setup.data_dir, "train", here, here)
        self.test = DeviceData(setup.data_dir, "test", here, here)
        batch_size = params["batch_size"]
        self.batches = BatchMaker(self.train, batch_size, params["tutorial_double_scaling"])
        self.num_batches = math.ceil(len(self.train) / batch_size)
        check_last_batch(len(self.train), batch_size, params["microbatches"])

        torch.manual_seed(params["seed"])
        whole = model_for(params, [CPU] * self.stages)  # the same initial weights everywhere
        self.model = whole.stages[self.rank].to(self.device)
        self.optimizer = make_optimizer(self.model, params)
        self.loss = StageLoss(params["microbatches"])
        self.schedules: dict[tuple, object] = {}
        self.shuffle = torch.Generator().manual_seed(params["seed"])
        self.history, self.attempts, self.timeline_rows = [], [], []
        self.epoch, self.order, self.batches_done, self.epoch_seconds_so_far = 0, None, 0, 0.0
        self.batch_losses = torch.zeros(self.num_batches, device=ctx.comm_device)
        self.timeline = None
        self.stop_flag = torch.zeros(1, dtype=torch.int64, device=ctx.comm_device)
        self.vote = None  # the stop vote in flight (agree_to_stop)

    # -- the pipeline --------------------------------------------------------
    def schedule(self, rows: int, training: bool = True):
        """The schedule for batches of ``rows`` rows: a stage is set up for one shape."""
        key = (rows, training)
        if key not in self.schedules:
            stage = PipelineStage(self.model, self.rank, self.stages, self.device)
            if training:
                kind = SCHEDULES[self.params["schedule"]]
                made = kind(stage, self.params["microbatches"], self.loss, scale_grads=False)
            else:  # evaluation: the whole chunk at once, as the single-process engine
                made = ScheduleGPipe(stage, 1)
            self.schedules[key] = made
        return self.schedules[key]

    def run_stage(self, schedule, x=None, y=None, losses=None, **options):
        """This rank's part of one schedule step: inputs on the first, targets on the last."""
        args = (x,) if self.first else ()
        target = y if self.last else None
        return schedule.step(*args, target=target, losses=losses, **options)

    def agree_to_stop(self, stop: StopWatch) -> bool:
        """Whether every rank stops before this batch: any rank that must stop says so
        (rank r sends r + 1; the largest wins and tells the others why).

        The vote is sent one step ahead and read a step later, so that its round trip
        overlaps the step's compute instead of adding to it: every rank still reads the
        same result before the same batch; a stop asked for during batch b takes effect
        before batch b + 2.
        """
        if self.vote is None:  # the first batch of an attempt: nothing was sent yet
            self.vote = self._send_vote(stop)
        self.vote.wait()
        who = int(self.stop_flag.item()) - 1
        if who < 0:
            self.vote = self._send_vote(stop)
            return False
        self.vote = None
        reason = [stop.reason if who == self.rank else None]
        dist.broadcast_object_list(reason, src=who)
        stop.reason = reason[0] if who == 0 else f"stage {who}'s process {reason[0]}"
        return True

    def _send_vote(self, stop: StopWatch):
        self.stop_flag.fill_(self.rank + 1 if stop.should_stop() else 0)
        return dist.all_reduce(self.stop_flag, op=dist.ReduceOp.MAX, async_op=True)

    def run_epoch_batches(self, stop: StopWatch) -> bool:
        if self.order is None:
            self.order = torch.randperm(len(self.train), generator=self.shuffle)
        size = self.params["batch_size"]
        index_batches = self.order.to(self.train.images.device).split(size)
        losses = self.batch_losses.unbind()
        recorded = window(self.num_batches)
        self.model.train()
        started = time.perf_counter()
        for b in range(self.batches_done, self.num_batches):
            if self.agree_to_stop(stop):
                self.batches_done = b
                self.epoch_seconds_so_far += synchronized_elapsed(started, [self.device])
                self.end_timeline(keep=False)
                return False
            if b in recorded and not self.timeline_rows:
                self.record_timeline(b, recorded)
            self.train_step(index_batches[b], losses[b])
            if self.timeline is not None and b == recorded[-1]:
                self.end_timeline(keep=True)
        self.batches_done = self.num_batches
        self.epoch_seconds_so_far += synchronized_elapsed(started, [self.device])
        return True

    def train_step(self, index: torch.Tensor, loss_out: torch.Tensor) -> None:
        rows = len(index)
        schedule, self.loss.rows = self.schedule(rows), rows
        x, y = self.batches(index, index) if (self.first or self.last) else (None, None)
        chunk_losses = []
        self.optimizer.zero_grad()
        self.run_stage(schedule, x, y, chunk_losses, return_outputs=False)
        self.optimizer.step()
        if self.last:  # as pipelined_backward adds them: 0 + loss_0 + loss_1 + ...
            loss_out.copy_(sum(loss.detach() for loss in chunk_losses))

    # -- the timeline ---------------------------------------------------------
    def record_timeline(self, batch: int, recorded: range) -> None:
        if batch == recorded.start:
            dist.barrier()  # one start for every rank's clock
            start = [(time.perf_counter(), self.ctx.ranks[0]["hostname"])]
            dist.broadcast_object_list(start, src=0)
            origin, host = start[0]
            same_clock = host == self.ctx.ranks[self.rank]["hostname"]
            self.timeline = Timeline({self.rank: self.device}, origin if same_clock else None)
            self._instrument(self.schedule(self.params["batch_size"])._stage)
        if self.timeline is not None:
            self.timeline.step = batch - recorded.start

    def _instrument(self, stage) -> None:
        """Time the stage's compute of each micro-batch (the waits for its peers are not in)."""
        timeline, rank = self.timeline, self.rank
        forward, backward = stage.forward_one_chunk, stage.backward_one_chunk

        def forward_one_chunk(chunk, *args, **kwargs):
            with timeline.span(rank, chunk, "forward"):
                return forward(chunk, *args, **kwargs)

        def backward_one_chunk(chunk, *args, **kwargs):
            with timeline.span(rank, chunk, "backward"):
                return backward(chunk, *args, **kwargs)

        stage.forward_one_chunk, stage.backward_one_chunk = forward_one_chunk, backward_one_chunk
        self._instrumented = stage

    def end_timeline(self, keep: bool) -> None:
        if self.timeline is None:
            return
        del self._instrumented.forward_one_chunk, self._instrumented.backward_one_chunk
        gathered = [None] * self.stages
        dist.all_gather_object(gathered, self.timeline.rows() if keep else [])
        if keep:
            self.timeline_rows = [row for rows in gathered for row in rows]
        self.timeline = None

    # -- the end of an epoch ----------------------------------------------------
    def finish_epoch(self) -> dict:
        dist.broadcast(self.batch_losses, src=self.stages - 1)
        return super().finish_epoch()

    def peak_memory(self) -> dict:
        peak = torch.zeros(self.stages, dtype=torch.float64, device=self.ctx.comm_device)
        if self.device.type == "cuda":
            peak[self.rank] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        dist.all_reduce(peak)
        if not any(d.type == "cuda" for d in self.devices):
            return {}
        return {f"peak_memory_mb_stage{r}": float(mb) for r, mb in enumerate(peak.tolist())}

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """The single-process engine's evaluation, the chunks passed through the stages."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.comm_device)
        double_scaling = self.params["tutorial_double_scaling"]
        for start in range(0, len(self.test), EVAL_CHUNK):
            pixels = self.test.images[start : start + EVAL_CHUNK].to(torch.float32)
            labels = self.test.labels[start : start + EVAL_CHUNK]
            schedule = self.schedule(len(labels), training=False)
            out = self.run_stage(schedule, scale_pixels_(pixels, double_scaling))
            if self.last:
                sums[0] += F.cross_entropy(out, labels, reduction="sum").item()
                sums[1] += int((out.argmax(dim=1) == labels).sum())
        dist.broadcast(sums, src=self.stages - 1)
        loss_sum, correct = sums.tolist()
        return loss_sum / len(self.test), int(correct) / len(self.test)

    # -- checkpoint state (gathered on rank 0, scattered back) ------------------
    def state_dict(self) -> dict | None:
        dist.broadcast(self.batch_losses, src=self.stages - 1)  # the epoch's losses so far
        part = {
            "model": {f"stages.{self.rank}.{k}": v for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }
        parts = [None] * self.stages if self.first else None
        dist.gather_object(cpu_state(part), parts, dst=0)
        if not self.first:
            return None
        state = {"model": {}, "optimizer": {"stages": []}, **self.position_state()}
        for p in parts:
            state["model"].update(p["model"])
            state["optimizer"]["stages"].append(p["optimizer"])
        return state

    def stage_part(self, state: dict, rank: int) -> dict:
        """What rank ``rank`` loads of a checkpoint: the common state and its stage."""
        prefix = f"stages.{rank}."
        model = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
        return state | {"model": model, "optimizer": state["optimizer"]["stages"][rank]}

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.first:
            save_checkpoint(self.checkpoint_path, state)

    def write_outputs(self) -> None:
        state = self.state_dict()
        if self.first:
            write_model(self.setup.out_dir, state["model"])
            write_timeline(self.setup.out_dir, self.timeline_rows)
            runfiles.write_record(self.setup.out_dir, self.record())

    def train_step_name(self) -> str:
        return type(self.schedule(self.params["batch_size"])).__name__

    def record(self) -> dict:
        record = super().record()
        record["setup"] |= {"world_size": self.stages, "process_group_backend": self.ctx.backend}
        return record


def resume(trainer: PipelineTrainer) -> bool:
    """trainer.resume for every rank: rank 0 reads and checks the checkpoint, each rank
    loads its part; False (all ranks) if one had to be set aside after a partial load."""
    parts = [None]
    if trainer.first:
        state = load_checkpoint(trainer.checkpoint_path, trainer.fingerprint)
        why = position_error(trainer, state) if state is not None else None
        if why is not None:
            set_aside(trainer.checkpoint_path, why)
            state = None
        parts = [
            None if state is None else trainer.stage_part(state, r) for r in range(trainer.stages)
        ]
    mine = [None]
    dist.scatter_object_list(mine, parts if trainer.first else None, src=0)
    failed = torch.zeros(1, device=trainer.ctx.comm_device)
    if mine[0] is not None:
        try:
            trainer.load_state_dict(mine[0])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            log(f"stage {trainer.rank}: checkpoint does not fit ({err})")
            failed.fill_(1)
    dist.all_reduce(failed)
    if failed.item():
        if trainer.first:
            set_aside(trainer.checkpoint_path, "does not fit this model")
        return False
    if mine[0] is not None:
        log(
            f"resuming from {trainer.checkpoint_path}: epoch {trainer.epoch + 1}, "
            f"batch {trainer.batches_done + 1}"
        )
    return True


class _NoTable:
    """Ranks other than 0 write no epochs.csv."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def append(self, row: dict) -> None:
        pass

    def check(self, history: list[dict]) -> None:
        pass


class PeerSetupError(RuntimeError):
    """Another stage's process could not start the run (it reports why)."""


SETUP_FAILURES = (LockedError, DataError, IdxFormatError, DeviceError, RunFileError)


def start(params: dict, setup, ctx: RankContext, held: contextlib.ExitStack) -> PipelineTrainer:
    """This stage's trainer, once every process could build its own: a failure that
    running again cannot fix (a busy run folder, bad data) ends all of them alike, instead
    of leaving the others to fail on a closed connection."""
    failure = None
    try:
        if ctx.rank == 0:
            setup.out_dir.mkdir(parents=True, exist_ok=True)
            lock = exclusive_lock(setup.out_dir / LOCK_FILE, f"run folder {setup.out_dir}")
            held.enter_context(lock)
        trainer = PipelineTrainer(params, setup, ctx)
    except SETUP_FAILURES as err:
        failure = err
    failed = torch.tensor([0 if failure is None else 1], device=ctx.comm_device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if failed.item():
        raise PeerSetupError("another stage's process could not start this run (see its error)")
    return trainer


def train(params: dict, setup, ctx: RankContext) -> bool:
    """One attempt at the run by this stage's process: True once it is finished."""
    started = run_record.now()
    with contextlib.ExitStack() as held:
        trainer = start(params, setup, ctx, held)
        if not resume(trainer):
            trainer = PipelineTrainer(params, setup, ctx)
        attempt = run_record.attempt_record(started, trainer.epoch + 1, trainer.devices)
        attempt["device_names"] = [r["device_name"] for r in ctx.ranks]
        attempt["ranks"] = ctx.ranks
        trainer.attempts.append(attempt)
        epochs_path = setup.out_dir / runfiles.EPOCHS_FILE
        table = runfiles.EpochTable(epochs_path, trainer.history) if ctx.rank == 0 else _NoTable()
        with StopWatch(setup.deadline_margin, watch_deadline=ctx.rank == 0) as stop, table:
            finished = train_attempt(trainer, stop, attempt, table)
        if finished:
            trainer.write_outputs()
            if ctx.rank == 0:
                trainer.checkpoint_path.unlink(missing_ok=True)
        if trainer.vote is not None:
            trainer.vote.wait()  # the last vote, sent for a batch that never came
        dist.barrier()  # no process leaves while rank 0 is still writing
    return finished
