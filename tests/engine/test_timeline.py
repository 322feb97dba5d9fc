"""The recorded timeline (fmnist/engine/timeline.py) of the single-process engine: autograd and
the kernel step record every stage's forward and backward of every micro-batch, one after
another (one process computes one thing at a time); the trainer records one window."""

from __future__ import annotations

import pytest
import torch
from cuda_standin import CudaRuleError, fake_cuda
from fmnist.config import settings
from fmnist.engine import timeline
from fmnist.engine.kernel_step import KernelStep
from fmnist.engine.model import ModelParallelMLP, pipelined_backward
from fmnist.engine.single_process import SingleProcessEngine
from fmnist.engine.trainer import RunSetup, Trainer
from fmnist.report import timeline_figure as bubble
from fmnist.rundir import runfiles
from helpers import train_batch

CPU = torch.device("cpu")
ONE_PROCESS = SingleProcessEngine([CPU, CPU])


def passes(rows: list[dict]) -> list[tuple]:
    return [(r["stage"], r["microbatch"], r["phase"]) for r in rows]


def assert_sequential(rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: r["start_seconds"])
    for a, b in zip(ordered, ordered[1:]):
        assert a["end_seconds"] <= b["start_seconds"], (a, b)


@pytest.mark.parametrize("stages", [2, 3])
def test_autograd_records_each_stage_and_micro_batch_in_order(synthetic_data, stages):
    torch.manual_seed(0)
    model = ModelParallelMLP([32] * (stages - 1), [CPU] * stages, activation="relu")
    record = timeline.Timeline(dict(enumerate(model.devices)))
    x, y = train_batch(synthetic_data, slice(0, 40))
    loss = pipelined_backward(model, x, y, 2, record)
    rows = record.rows()
    forward = [p for p in passes(rows) if p[2] == "forward"]
    # GPipe's ticks: stage s works on micro-batch t - s at tick t.
    ticks = sorted(forward, key=lambda p: (p[0] + p[1], p[0]))
    assert forward == ticks
    backward = [p[:2] for p in passes(rows) if p[2] == "backward"]
    # One backward pass per micro-batch, in order, from the last stage to the first.
    assert backward == [(s, mb) for mb in range(2) for s in reversed(range(stages))]
    assert_sequential(rows)
    # Recording changes nothing: the same loss and gradients without it.
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert torch.equal(pipelined_backward(model, x, y, 2), loss)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_the_kernel_step_records_its_passes(synthetic_data):
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    adam = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    step = KernelStep(model, adam, 40, 4)
    step.timeline = timeline.Timeline({0: CPU, 1: CPU})
    x, y = train_batch(synthetic_data, slice(0, 40))
    step(x.flatten(1), y, torch.zeros(()))
    rows = step.timeline.rows()
    assert sorted(passes(rows)) == sorted(
        (s, mb, phase) for s in range(2) for mb in range(4) for phase in ("forward", "backward")
    )
    assert_sequential(rows)


def test_the_trainer_records_one_window_that_bubble_reads(synthetic_data, tmp_path):
    """Batches 2-5 of the first epoch, written as timeline.csv; its idle fraction shows that
    one process does not overlap its stages: about 1 - 1/K, whatever the formula says."""
    params = {
        **settings.defaults()["train"],
        "devices": ["cpu", "cpu"],
        "microbatches": 4,
        "cpu_step": "autograd",
        "epochs": 1,
    }
    with torch.random.fork_rng(devices=[]):
        trainer = Trainer(
            params, RunSetup(synthetic_data, tmp_path, threads=1), SingleProcessEngine([CPU, CPU])
        )

        class Never:
            reason = None

            def should_stop(self):
                return False

        assert trainer.run_epoch_batches(Never())
    rows = trainer.timeline_rows
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 3]
    assert len(rows) == 4 * 2 * 4 * 2
    timeline.write_timeline(tmp_path, rows)
    table = bubble.read_timeline(tmp_path / runfiles.TIMELINE_FILE)
    bubble.check_timeline(table, 4, tmp_path / runfiles.TIMELINE_FILE)
    idle = bubble.idle_fractions(table, 4)
    # One process runs its two stages one after the other, never both at once: each step
    # leaves at least half of the stages' time idle, however fast or loaded the machine.
    assert idle.fraction >= 1 - 1 / 2
    assert all(fraction >= 1 - 1 / 2 for fraction in idle.per_step.values())
    assert idle.gpipe == pytest.approx(0.2)


def test_the_window_is_a_few_batches_after_the_first():
    assert timeline.window(600) == range(1, 5)
    assert timeline.window(3) == range(1, 3)
    assert timeline.window(1) == range(0, 1)


# ------------------------------------------------ GPU layouts, under CUDA's rules (stand-in)
GPU_LAYOUTS = [
    ["cuda:0", "cuda:1"],  # the default with two GPUs
    ["cuda:0", "cpu"],
    ["cpu", "cuda:0"],
    ["cuda:0", "cuda:0", "cuda:1"],  # auto: 3 stages on 2 GPUs
    ["cuda:0", "cuda:0"],
]


@pytest.mark.parametrize("layout", GPU_LAYOUTS, ids="+".join)
@pytest.mark.parametrize("microbatches", [1, 4])
def test_gpu_layouts_measure_each_span_on_its_own_device(
    synthetic_data, monkeypatch, layout, microbatches
):
    """Each span's two timestamps and its origin belong to the stage's device: CUDA events
    are compared only with events of their own device (the stand-in raises as CUDA does),
    CPU stamps only with the CPU clock. The model computes on the CPU; only the timestamps
    are taken as they would be on the layout's devices."""
    fake_cuda(monkeypatch, count=2)
    stages = len(layout)
    torch.manual_seed(0)
    model = ModelParallelMLP([32] * (stages - 1), [CPU] * stages, activation="relu")
    record = timeline.Timeline({s: torch.device(d) for s, d in enumerate(layout)})
    x, y = train_batch(synthetic_data, slice(0, 40))
    pipelined_backward(model, x, y, microbatches, record)
    rows = record.rows()
    assert sorted(passes(rows)) == sorted(
        (s, mb, phase)
        for s in range(stages)
        for mb in range(microbatches)
        for phase in ("forward", "backward")
    )
    for row in rows:
        assert 0 <= row["start_seconds"] <= row["end_seconds"], row
    # On one clock (stages on the same device), a stage's backward of a micro-batch ends
    # no later than the stage below ends its own (it hands the gradient down).
    spans = {(r["stage"], r["microbatch"], r["phase"]): r for r in rows}
    for mb in range(microbatches):
        for s in range(stages - 1):
            if layout[s] == layout[s + 1]:
                upper, lower = spans[(s + 1, mb, "backward")], spans[(s, mb, "backward")]
                assert upper["end_seconds"] <= lower["end_seconds"]


def test_the_stand_in_refuses_what_cuda_refuses(monkeypatch):
    """The rules the timeline test relies on, so that it cannot pass by accident."""
    cuda = fake_cuda(monkeypatch, count=2)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(torch.cuda.current_stream(torch.device("cuda:0")))
    b.record(torch.cuda.current_stream(torch.device("cuda:1")))
    with pytest.raises(CudaRuleError, match="NotReady"):
        a.elapsed_time(a)
    cuda.synchronize(0), cuda.synchronize(1)
    with pytest.raises(CudaRuleError, match="events of cuda:0 and cuda:1"):
        a.elapsed_time(b)
    with pytest.raises(TypeError):
        a.elapsed_time(1.0)
    with pytest.raises(CudaRuleError, match="recorded on a stream of cuda:1"):
        a.record(torch.cuda.current_stream(torch.device("cuda:1")))
    with pytest.raises(CudaRuleError, match="invalid device ordinal 2"):
        torch.cuda.current_stream(torch.device("cuda:2"))
    assert a.elapsed_time(a) == 0
