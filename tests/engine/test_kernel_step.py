"""Tests of fmnist/engine/kernel_step.py: the hand-written CPU step is bitwise
autograd's step (losses, weights, optimizer state) for every Adam setting and micro-batch
count, and runs only where train.cpu_step and the devices allow it."""

from __future__ import annotations

import itertools

import pytest
import torch
from fmnist.config import settings
from fmnist.engine.kernel_step import AdamUpdate, KernelStep
from fmnist.engine.model import ModelParallelMLP
from fmnist.engine.single_process import SingleProcessEngine
from fmnist.engine.step import AutogradStep, make_step
from fmnist.engine.trainer import RunSetup, Trainer

CPU = torch.device("cpu")
ONE_PROCESS = SingleProcessEngine([CPU, CPU])
META = torch.device("meta")


class NeverStop:
    reason = None

    def should_stop(self) -> bool:
        return False


def _trainer(data_dir, out_dir, adam_impl, microbatches, batch_size, autograd):
    params = {
        **settings.defaults()["train"],
        "devices": ["cpu", "cpu"],
        "adam_impl": adam_impl,
        "microbatches": microbatches,
        "batch_size": batch_size,
        "cpu_step": "autograd" if autograd else "kernels",
    }
    return Trainer(params, RunSetup(data_dir, out_dir, threads=1), ONE_PROCESS)


@pytest.mark.parametrize(
    ("adam_impl", "microbatches"),
    list(itertools.product(["for_loop", "foreach", "fused"], [1, 3])) + [("for_loop", 64)],
)
def test_train_step_is_bitwise_the_autograd_step(synthetic_data, tmp_path, adam_impl, microbatches):
    """KernelStep (used for training) and AutogradStep (pipelined_backward,
    optimizer.step) give the same losses, weights and optimizer state, to the bit,
    over two epochs of 32 batches, the last one short (2000 = 31 x 64 + 16)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            fast, ref = (
                _trainer(synthetic_data, tmp_path, adam_impl, microbatches, 64, autograd)
                for autograd in (False, True)
            )
            losses = {id(fast): [], id(ref): []}
            for t in (fast, ref):
                for _ in range(2):
                    assert t.run_epoch_batches(NeverStop())
                    losses[id(t)].append(t.batch_losses.clone())
                    t.finish_epoch()
    finally:
        torch.set_num_threads(threads)
    assert isinstance(fast.step, KernelStep)
    assert isinstance(ref.step, AutogradStep)
    for a, b in zip(losses[id(fast)], losses[id(ref)]):
        assert torch.equal(a, b)
    assert len(set(losses[id(fast)][0].tolist())) == 32  # it trained
    assert [r["train_loss"] for r in fast.history] == [r["train_loss"] for r in ref.history]
    for (name, p), q in zip(fast.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(p, q), name
    state, ref_state = fast.optimizer.state_dict(), ref.optimizer.state_dict()
    assert state["param_groups"] == ref_state["param_groups"]
    for i in ref_state["state"]:
        assert set(state["state"][i]) == set(ref_state["state"][i])
        for k, v in ref_state["state"][i].items():
            assert torch.equal(state["state"][i][k], v), (i, k)


@pytest.mark.parametrize("kind", ["cpu", "single"])
def test_adam_update_is_torch_adam_for_loop(kind):
    """Both for_loop code paths (CPU _foreach batching; one tensor at a time, which
    devices other than the CPU take) give torch.optim.Adam(foreach=False)'s numbers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = [torch.randn(30, 20), torch.randn(20), torch.randn(5, 30)]
        grads = [[torch.randn_like(p) for p in params] for _ in range(6)]
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    update = AdamUpdate(torch.optim.Adam(ours, lr=0.01, foreach=False))
    ref_opt = torch.optim.Adam(ref, lr=0.01, foreach=False)
    for step, gs in enumerate(grads):
        for p, q, g in zip(ours, ref, gs):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 1:  # the first step created the state; now the groups exist
            assert update.refresh()
            assert [g.kind for g in update.groups] == ["cpu"]
            for g in update.groups:
                g.kind = kind
                g.grads = [p.grad for p in g.params]
        elif step > 1:
            for g in update.groups:
                g.grads = [p.grad for p in g.params]
        update()
        ref_opt.step()
        for p, q in zip(ours, ref):
            assert torch.equal(p, q), step
    state, ref_state = update.optimizer.state_dict()["state"], ref_opt.state_dict()["state"]
    for i in ref_state:
        for k, v in ref_state[i].items():
            assert torch.equal(state[i][k], v), (i, k)


def test_hand_written_step_only_where_all_stages_are_on_the_cpu(torch_state):
    cpu_model = ModelParallelMLP(8, [CPU, CPU])
    cpu_adam = torch.optim.Adam(cpu_model.parameters())
    assert (
        type(make_step(cpu_model, cpu_adam, 10, {"microbatches": 1, "cpu_step": "kernels"}))
        is KernelStep
    )
    # A stand-in for a GPU stage: the step falls back to autograd and torch.optim.Adam.
    mixed = ModelParallelMLP(8, [CPU, META])
    mixed_adam = torch.optim.Adam(mixed.parameters())
    assert (
        type(make_step(mixed, mixed_adam, 10, {"microbatches": 2, "cpu_step": "kernels"}))
        is AutogradStep
    )
    # ... and on the CPU when train.cpu_step asks for autograd.
    settings_autograd = {"microbatches": 1, "cpu_step": "autograd"}
    assert type(make_step(cpu_model, cpu_adam, 10, settings_autograd)) is AutogradStep


@pytest.mark.parametrize("devices", [[CPU, META], [META, CPU], [META, META]])
def test_the_hand_written_step_refuses_a_stage_off_the_cpu(torch_state, devices):
    """Its ATen calls are proven bitwise autograd's on the CPU only; built for a GPU stage
    (the benchmark's floor once did) it says so instead of running unchecked kernels."""
    model = ModelParallelMLP(8, devices)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="runs on the CPU only .* use AutogradStep"):
        KernelStep(model, adam, 10, 1)


@pytest.mark.parametrize(
    ("hidden_sizes", "split", "activation"),
    [([8], [2], "log_softmax"), ([8], [1, 1], "relu"), ([8, 8], [1, 2], "log_softmax")],
    ids=["one-stage", "relu", "three-layers"],
)
def test_any_other_layout_takes_the_autograd_step(torch_state, hidden_sizes, split, activation):
    """KernelStep is written for the tutorial's layout only (Linear + log_softmax, then
    Linear); every other model trains with autograd, also on the CPU."""
    model = ModelParallelMLP(hidden_sizes, [CPU] * len(split), split, activation)
    adam = torch.optim.Adam(model.parameters())
    step = make_step(model, adam, 10, {"microbatches": 1, "cpu_step": "kernels"})
    assert type(step) is AutogradStep


def test_run_json_records_the_autograd_step_of_a_deeper_model(synthetic_data, tmp_path):
    params = {
        **settings.defaults()["train"],
        "devices": ["cpu", "cpu"],
        "hidden_sizes": [16, 8],
        "epochs": 1,
    }
    trainer = Trainer(
        params, RunSetup(synthetic_data, tmp_path, threads=1), SingleProcessEngine([CPU, CPU])
    )
    assert trainer.model.split == [1, 2]
    assert trainer.record()["setup"]["train_step"] == "AutogradStep"
