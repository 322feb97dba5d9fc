"""Tests of fmnist/engine/model.py: the tutorial's MLP as stages, moving activations, GPipe loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bench.tutorial import SeqNet
from fmnist.engine.model import ModelParallelMLP, pipelined_backward
from helpers import train_batch
from torch import nn

CPU = torch.device("cpu")
META = torch.device("meta")
PARAM_NAMES = ["stages.0.0.weight", "stages.0.0.bias", "stages.1.weight", "stages.1.bias"]
SEQNET_NAMES = ["lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"]


def tutorial_net(hidden: int = 200) -> SeqNet:
    """The tutorial's SeqNet, both layers on the CPU."""
    return SeqNet(28 * 28, hidden, 10, [CPU, CPU])


# ------------------------------------------------------------------ 1. placement


def test_two_cpu_stages_hold_the_tutorial_layers():
    model = ModelParallelMLP(200, [CPU, CPU])
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
    model = ModelParallelMLP(200, [CPU, META])
    assert {p.device for p in model.stages[0].parameters()} == {CPU}
    assert {p.device for p in model.stages[1].parameters()} == {META}
    # Without the move, F.linear(cpu input, meta weight) raises.
    out = model(torch.rand(7, 1, 28, 28))
    assert out.device == META
    assert out.shape == (7, 10)


def test_meta_to_cpu_fails_when_the_activation_is_copied():
    model = ModelParallelMLP(200, [META, CPU])
    assert {p.device for p in model.stages[0].parameters()} == {META}
    assert {p.device for p in model.stages[1].parameters()} == {CPU}
    # A meta activation has no data to copy to the CPU. (A model that forgot the move
    # would fail differently: "Tensor on device meta is not on the expected device cpu".)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        model(torch.rand(3, 1, 28, 28))


def test_initial_weights_do_not_depend_on_the_devices():
    torch.manual_seed(3)
    both_cpu = ModelParallelMLP(50, [CPU, CPU]).state_dict()
    torch.manual_seed(3)
    second_meta = ModelParallelMLP(50, [CPU, META]).state_dict()
    torch.manual_seed(3)
    first_meta = ModelParallelMLP(50, [META, CPU]).state_dict()
    for key in ("stages.0.0.weight", "stages.0.0.bias"):
        assert torch.equal(second_meta[key], both_cpu[key])
    for key in ("stages.1.weight", "stages.1.bias"):
        assert torch.equal(first_meta[key], both_cpu[key])


# ------------------------------------------------- 2. two stages == one device


def test_two_cpu_stages_train_bitwise_like_the_tutorial_net(synthetic_data):
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    torch.manual_seed(0)
    reference = tutorial_net()
    ref_state = reference.state_dict()
    for name, ref_name in zip(PARAM_NAMES, SEQNET_NAMES):
        assert torch.equal(model.state_dict()[name], ref_state[ref_name])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).numpy()
    losses, ref_losses = [], []
    for step in range(30):
        x, y = train_batch(synthetic_data, order[(step % 20) * 100 : (step % 20 + 1) * 100])
        opt.zero_grad()
        loss = pipelined_backward(model, x, y, 1)
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
    for name, ref_name in zip(PARAM_NAMES, SEQNET_NAMES):
        assert torch.equal(model.state_dict()[name], reference.state_dict()[ref_name])


# ---------------------------------------------------------------- 3. microbatches


def _loss_and_grads(model, x, y, microbatches):
    model.zero_grad()
    loss = pipelined_backward(model, x, y, microbatches)
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_one_microbatch_is_the_tutorial_loss(synthetic_data):
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    torch.manual_seed(0)
    reference = tutorial_net()
    x, y = train_batch(synthetic_data, slice(0, 100))
    loss = pipelined_backward(model, x, y, 1)
    assert torch.equal(loss, F.cross_entropy(model(x), y))
    assert torch.equal(loss, nn.CrossEntropyLoss()(reference(x), y))


@pytest.mark.parametrize("microbatches", [2, 3, 4, 7, 100])
def test_microbatched_loss_and_gradients_match_the_whole_train_batch(synthetic_data, microbatches):
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    x, y = train_batch(synthetic_data, slice(0, 100))
    loss, grads = _loss_and_grads(model, x, y, 1)
    split_loss, split_grads = _loss_and_grads(model, x, y, microbatches)
    torch.testing.assert_close(split_loss, loss, rtol=1e-6, atol=0)
    for name, g, ref in zip(PARAM_NAMES, split_grads, grads):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7, msg=name)


def test_microbatches_are_weighted_by_their_size(synthetic_data):
    """100 rows in 7 chunks are 6 x 15 + 10: a mean of chunk means would be off."""
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    x, y = train_batch(synthetic_data, slice(0, 100))
    with torch.no_grad():
        whole = F.cross_entropy(model(x), y)
        mean_of_means = torch.stack(
            [F.cross_entropy(o, t) for o, t in zip(model(x).chunk(7), y.chunk(7))]
        ).mean()
    split = pipelined_backward(model, x, y, 7)
    assert abs(float(mean_of_means - whole)) > 1e-3  # the tolerance above would catch it
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=0)


def test_a_last_batch_smaller_than_the_microbatch_count(synthetic_data):
    torch.manual_seed(0)
    model = ModelParallelMLP(200, [CPU, CPU])
    x, y = train_batch(synthetic_data, slice(0, 5))
    loss, grads = _loss_and_grads(model, x, y, 1)
    split_loss, split_grads = _loss_and_grads(model, x, y, 7)
    torch.testing.assert_close(split_loss, loss, rtol=1e-6, atol=0)
    for g, ref in zip(split_grads, grads):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)


def test_pipeline_schedule_overlaps_the_stages():
    """At tick t stage 0 runs chunk t while stage 1 runs chunk t - 1 (GPipe)."""
    model = ModelParallelMLP(20, [CPU, CPU])
    calls = []
    for s, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda m, inp, out, s=s: calls.append((s, inp[0].shape[0])))
    x = torch.rand(10, 1, 28, 28)  # 4 micro-batches: 3, 3, 3, 1 rows
    pipelined_backward(model, x, torch.zeros(10, dtype=torch.int64), 4)
    assert calls == [(0, 3), (0, 3), (1, 3), (0, 3), (1, 3), (0, 1), (1, 3), (1, 1)]


# ------------------------------------------------------------------- 4. N stages


def _reference_mlp(hidden_sizes, activation):
    """The same MLP as one nn.Sequential on one device (no stages)."""
    sizes = [28 * 28, *hidden_sizes, 10]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.LogSoftmax(dim=1) if activation == "log_softmax" else nn.ReLU())
    return nn.Sequential(nn.Flatten(), *layers)


def test_the_default_split_keeps_the_tutorial_model():
    torch.manual_seed(5)
    default = ModelParallelMLP(200, [CPU, CPU])
    torch.manual_seed(5)
    explicit = ModelParallelMLP([200], [CPU, CPU], [1, 1], "log_softmax")
    assert list(explicit.state_dict()) == PARAM_NAMES
    for (name, p), q in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(p, q), name
    assert isinstance(explicit.stages[1], nn.Linear)


def test_stages_hold_contiguous_layers():
    model = ModelParallelMLP([32, 16], [CPU, META], [1, 2], "relu")
    assert [type(m).__name__ for m in model.stages[0]] == ["Linear", "ReLU"]
    assert [type(m).__name__ for m in model.stages[1]] == ["Linear", "ReLU", "Linear"]
    assert {p.device for p in model.stages[1].parameters()} == {META}
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="does not fit 3 layers"):
        ModelParallelMLP([32, 16], [CPU, CPU], [1, 1])


@pytest.mark.parametrize(
    ("hidden_sizes", "activation", "splits"),
    [
        ([200], "log_softmax", [[2], [1, 1]]),
        ([64, 32], "relu", [[3], [1, 2], [2, 1], [1, 1, 1]]),
        ([64, 32], "log_softmax", [[3], [1, 1, 1]]),
    ],
    ids=["tutorial", "relu-3-layers", "log_softmax-3-layers"],
)
def test_one_two_and_three_cpu_stages_train_bitwise_like_one_device(
    synthetic_data, hidden_sizes, activation, splits
):
    """However the layers are split into stages, training is bitwise the training of the
    same MLP as one nn.Sequential on one device: same initial weights, losses, weights."""
    torch.manual_seed(0)
    reference = _reference_mlp(hidden_sizes, activation)
    models = []
    for split in splits:
        torch.manual_seed(0)
        models.append(ModelParallelMLP(hidden_sizes, [CPU] * len(split), split, activation))
    ref_params = list(reference.parameters())
    for model in models:
        assert len(model.stages) in (1, 2, 3)
        for p, q in zip(model.parameters(), ref_params, strict=True):
            assert torch.equal(p, q)
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.01) for m in models]
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).numpy()
    for step in range(20):
        x, y = train_batch(synthetic_data, order[step * 100 : (step + 1) * 100])
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(reference(x), y)
        ref_loss.backward()
        ref_opt.step()
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            loss = pipelined_backward(model, x, y, 1)
            opt.step()
            assert torch.equal(loss, ref_loss), (step, model.split)
    for model in models:
        for p, q in zip(model.parameters(), ref_params, strict=True):
            assert torch.equal(p, q), model.split


def test_three_stage_microbatches_overlap_and_match(synthetic_data):
    torch.manual_seed(0)
    model = ModelParallelMLP([32, 16], [CPU] * 3, [1, 1, 1], "relu")
    calls = []
    for s, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda m, inp, out, s=s: calls.append(s))
    x, y = train_batch(synthetic_data, slice(0, 100))
    loss, grads = _loss_and_grads(model, x, y, 1)
    calls.clear()
    split_loss, split_grads = _loss_and_grads(model, x, y, 2)
    # ticks: (s0 c0), (s0 c1, s1 c0), (s1 c1, s2 c0), (s2 c1): stage s on chunk t - s
    assert calls == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(split_loss, loss, rtol=1e-6, atol=0)
    for g, ref in zip(split_grads, grads):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)
