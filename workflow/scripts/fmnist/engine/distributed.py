"""The distributed engine: a process (rank) per stage, or per stages_per_process stages, on
torch.distributed.pipelining.

What the training loop (fmnist.engine.trainer) asks of an engine, answered for one
process. Rank r builds only its own stages, with the weights they have in the whole model
(fmnist.engine.model.stage_modules skips the other stages' draws from the seed), and their
optimizer state. Activations and gradients travel between the ranks through the process
group, in the order the run's schedule gives them (train.schedule: one stage per process,
a loop of stages, or a V); the loss and its arithmetic are the single-process engine's
(model.microbatch_loss, gradients not rescaled), so both engines give the same bits where
the schedule accumulates the micro-batches' gradients in the same order.

Rank 0 leads: it holds the run-folder lock, writes epochs.csv, checkpoint.pt, timeline.csv,
run.json and model.pt (from the shards every rank saves, fmnist.engine.checkpoint). The
rank holding the last stage computes the losses and sends them on. Before every step the
ranks agree whether to stop (any rank's signal, rank 0's SLURM deadline), so they all stop
after the same batch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from torch.distributed.pipelining.schedules import (
    Schedule1F1B,
    ScheduleDualPipeV,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
    ScheduleZBVZeroBubble,
)

from fmnist.config.stages import SCHEDULE_PLACEMENT, stage_ranks, stage_split
from fmnist.data.idx import DataError
from fmnist.engine.devices import peak_rss_mb
from fmnist.engine.model import (
    first_layers,
    layer_parameters,
    layer_sizes,
    microbatch_loss,
    stage_modules,
)
from fmnist.engine.ranks import RankContext
from fmnist.engine.timeline import Timeline

SCHEDULES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "looped_bfs": ScheduleLoopedBFS,
    "interleaved_1f1b": ScheduleInterleaved1F1B,
    "interleaved_zero_bubble": ScheduleInterleavedZeroBubble,
    "zbv_zero_bubble": ScheduleZBVZeroBubble,
    "dual_pipe_v": ScheduleDualPipeV,
}
CPU = torch.device("cpu")


class PeerSetupError(RuntimeError):
    """Another stage's process could not start the run (it reports why)."""


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


class StageStep:
    """This stage's part of a training step (and of an evaluation pass) on the schedules."""

    def __init__(self, model, optimizer, engine: DistributedEngine, params: dict):
        self.model, self.optimizer, self.engine, self.params = model, optimizer, engine, params
        self.loss = StageLoss(params["microbatches"])
        self.schedules: dict[int, object] = {}
        self.stages: dict[int, list[PipelineStage]] = {}
        sizes, firsts = layer_sizes(params), first_layers(stage_split(params))
        self.widths = [sizes[first] for first in firsts]  # each stage's input features
        self._timeline = None

    def schedule(self, rows: int):
        """The schedule for batches of ``rows`` rows: a stage is set up for one shape."""
        if rows not in self.schedules:
            engine, placement = self.engine, SCHEDULE_PLACEMENT[self.params["schedule"]]
            stages = [
                PipelineStage(module, s, engine.stage_total, engine.device)
                for s, module in zip(engine.my_stages, self.model)
            ]
            held = stages[0] if placement == "one" else stages
            kind = SCHEDULES[self.params["schedule"]]
            made = kind(held, self.params["microbatches"], self.loss, scale_grads=False)
            self.stages[rows], self.schedules[rows] = stages, made
        return self.schedules[rows]

    def run(self, schedule, x=None, y=None, losses=None, **options):
        """This rank's part of one schedule step: inputs on the first, targets on the last;
        the output where it leaves the pipeline (the last rank), else None."""
        args = (x,) if self.engine.first else ()
        target = y if self.engine.last else None
        return schedule.step(*args, target=target, losses=losses, **options)

    def __call__(self, x, y, loss_out: torch.Tensor, rows: int) -> None:
        schedule, self.loss.rows = self.schedule(rows), rows
        chunk_losses = []
        self.optimizer.zero_grad()
        self.run(schedule, x, y, chunk_losses, return_outputs=False)
        self.optimizer.step()
        if self.engine.last:  # as pipelined_backward adds them: 0 + loss_0 + loss_1 + ...
            loss_out.copy_(sum(loss.detach() for loss in chunk_losses))

    def forward(self, x):
        """Evaluation: the whole chunk through the stages in order, as the single-process
        engine evaluates it; each activation sent on to the next stage's process. (Not a
        schedule's eval(): the V-shaped schedules run their backward actions in it too.)"""
        engine, h = self.engine, torch.flatten(x, 1).to(self.engine.device)
        for s, stage in zip(engine.my_stages, self.model):
            before = engine.stage_rank[s - 1] if s else engine.rank
            if before != engine.rank:
                h = torch.empty(len(x), self.widths[s], device=engine.ctx.comm_device)
                dist.recv(h, src=before)
            h = stage(h.to(engine.device))
            after = engine.stage_rank[s + 1] if s + 1 < engine.stage_total else engine.rank
            if after != engine.rank:
                dist.send(h.to(engine.ctx.comm_device), dst=after)
        return h if engine.last else None

    @property
    def name(self) -> str:
        return type(self.schedule(self.params["batch_size"])).__name__

    @property
    def timeline(self):
        return self._timeline

    @timeline.setter
    def timeline(self, timeline) -> None:
        """Time the stage's compute of each micro-batch (the waits for its peers are not in)."""
        self.schedule(self.params["batch_size"])
        self._timeline = timeline
        for stage in self.stages[self.params["batch_size"]]:
            time_passes(stage, timeline)


TIMED_PASSES = {
    "forward_one_chunk": "forward",
    "backward_one_chunk": "backward",
    "backward_weight_one_chunk": "weight",  # the zero-bubble schedules' weight gradients
}


def time_passes(stage: PipelineStage, timeline) -> None:
    """Time a stage's compute of each micro-batch (the waits for its peers are not in), or
    stop timing it (``timeline`` None)."""
    for method, phase in TIMED_PASSES.items():
        stage.__dict__.pop(method, None)
        if timeline is None:
            continue
        compute = getattr(stage, method)

        def timed(chunk, *args, _compute=compute, _phase=phase, **kwargs):
            with timeline.span(stage.stage_index, chunk, _phase):
                return _compute(chunk, *args, **kwargs)

        setattr(stage, method, timed)


class DistributedEngine:
    """One stage's process: its device, its peers, and the collectives the loop needs."""

    def __init__(self, ctx: RankContext, params: dict):
        self.ctx, self.rank, self.stages, self.device = ctx, ctx.rank, ctx.world_size, ctx.device
        self.stage_rank = stage_ranks(params)  # where the run's schedule places each stage
        self.stage_total, self.last_rank = len(self.stage_rank), self.stage_rank[-1]
        self.my_stages = [s for s, r in enumerate(self.stage_rank) if r == self.rank]
        self.first, self.last = 0 in self.my_stages, self.rank == self.last_rank
        self.leads = self.first
        self.name = f"stage {self.rank}'s process"
        self.ranks, self.devices = ctx.ranks, ctx.devices
        self.own_devices = [self.device]
        here = self.device if (self.first or self.last) else CPU  # where batches enter/leave
        self.data_devices = (here, here)
        self.loss_device = ctx.comm_device  # the last rank's losses are broadcast from there
        self.stop_flag = torch.zeros(1, dtype=torch.int64, device=ctx.comm_device)
        self.vote = None  # the stop vote in flight (agree_to_stop)
        self.step = None

    # -- the model and its step ------------------------------------------------
    def check_batches(self, rows: int, params: dict) -> None:
        check_last_batch(rows, params["batch_size"], params["microbatches"])

    def build_model(self, params: dict) -> nn.ModuleList:
        """This process's stages alone, with the weights they have in the whole model (the
        others' draws from the seed are skipped, never held)."""
        built = stage_modules(
            layer_sizes(params), stage_split(params), params["activation"], set(self.my_stages)
        )
        return nn.ModuleList([built[s] for s in self.my_stages]).to(self.device)

    def layer_parameters(self, model, params: dict) -> dict:
        return layer_parameters(dict(zip(self.my_stages, model)), stage_split(params))

    def make_step(self, model, optimizer, params: dict) -> StageStep:
        self.step = StageStep(model, optimizer, self, params)
        return self.step

    def step_name(self, step: StageStep) -> str:
        return step.name

    def run_step(self, step, batches, image_index, label_index, loss_out) -> None:
        """A batch enters at the first stage and meets its labels at the last."""
        ends = self.first or self.last
        x, y = batches(image_index, label_index) if ends else (None, None)
        step(x, y, loss_out, rows=len(image_index))

    def forward(self, model, x):
        return self.step.forward(x)

    def start_timeline(self) -> Timeline:
        """Every rank's clock starts when a barrier releases them; on rank 0's host the
        ranks take its start (one monotonic clock per host, so those stages line up).
        Another host's clock is its own: the release reached it within one round trip of
        a barrier, measured here, which bounds how far its times may be off rank 0's."""
        dist.barrier()
        released = time.perf_counter()
        start = [released]
        dist.broadcast_object_list(start, src=0)
        before = time.perf_counter()
        dist.barrier()
        round_trip = time.perf_counter() - before
        devices = dict.fromkeys(self.my_stages, self.device)
        if self.ranks[0]["hostname"] == self.ranks[self.rank]["hostname"]:
            return Timeline(devices, start[0])
        return Timeline(devices, released, clock_error=round_trip)

    def peak_memory(self) -> dict:
        """Each stage process's peak GPU memory since the last epoch, in MB."""
        peak = torch.zeros(self.stages, dtype=torch.float64, device=self.ctx.comm_device)
        if self.device.type == "cuda":
            peak[self.rank] = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        dist.all_reduce(peak)
        if not any(d.type == "cuda" for d in self.devices):
            return {}
        return {f"peak_memory_mb_stage{r}": float(mb) for r, mb in enumerate(peak.tolist())}

    # -- agreeing with the peers -------------------------------------------------
    def agree_on_setup(self, failure: Exception | None) -> None:
        """A failure to set up ends every process: its own, or a peer's."""
        failed = torch.tensor([0 if failure is None else 1], device=self.ctx.comm_device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failure is not None:
            raise failure
        if failed.item():
            raise PeerSetupError("another stage's process could not start this run (see its error)")

    def agree_to_stop(self, stop) -> bool:
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

    def _send_vote(self, stop):
        self.stop_flag.fill_(self.rank + 1 if stop.should_stop() else 0)
        return dist.all_reduce(self.stop_flag, op=dist.ReduceOp.MAX, async_op=True)

    def share_losses(self, losses: torch.Tensor) -> None:
        """The batches' losses, computed where the last stage is, to every rank."""
        dist.broadcast(losses, src=self.last_rank)

    def share_totals(self, loss_sum: float, correct: int) -> tuple[float, int]:
        """The evaluation's sums, made where the output leaves the pipeline, to every rank."""
        sums = torch.tensor([loss_sum, correct], dtype=torch.float64, device=self.ctx.comm_device)
        dist.broadcast(sums, src=self.last_rank)
        loss_sum, correct = sums.tolist()
        return loss_sum, int(correct)

    def gather_timeline(self, rows: list[dict]) -> list[dict]:
        gathered = [None] * self.stages
        dist.all_gather_object(gathered, rows)
        return [row for ranks_rows in gathered for row in ranks_rows]

    def share_position(self, state: dict | None) -> dict | None:
        """Rank 0's reading of the checkpoint's position, to every rank."""
        shared = [state]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def gather_peak_rss(self) -> list[float]:
        """Each stage process's peak resident memory, in MB, by rank."""
        peaks = [None] * self.stages
        dist.all_gather_object(peaks, peak_rss_mb())
        return peaks

    def all_succeeded(self, ok: bool) -> bool:
        failed = torch.zeros(1, device=self.ctx.comm_device)
        failed.fill_(0 if ok else 1)
        dist.all_reduce(failed)
        return not failed.item()

    # -- run.json and the end ------------------------------------------------------
    def record_setup(self) -> dict:
        return {"world_size": self.stages, "process_group_backend": self.ctx.backend}

    def attempt_record(self) -> dict:
        return {"device_names": [r["device_name"] for r in self.ranks], "ranks": self.ranks}

    def finish(self) -> None:
        if self.vote is not None:
            self.vote.wait()  # the last vote, sent for a batch that never came
        dist.barrier()  # no process leaves while rank 0 is still writing
