"""The training step written out kernel by kernel (Adam's update too), for models whose stages
are all on the CPU.

About 1.25-1.4x faster than autograd at batch 100 on 2-core CPUs, and bitwise equal to
it (tests/engine/test_kernel_step.py proves it for every Adam setting and micro-batch count).
It calls private ATen kernels in autograd's order, which no GPU has verified: it only
runs where every stage is on the CPU and train.cpu_step is "kernels".
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from fmnist.engine.model import OUTPUT_SIZE, ModelParallelMLP

# at::Reduction codes, as F.cross_entropy passes them to nll_loss.
REDUCTION_MEAN, REDUCTION_SUM = 1, 2
IGNORE_INDEX = -100
_NOT_RECORDED = nullcontext()


# ---------------------------------------------------------------- Adam, written out


class _AdamTensors:
    """The parameters on one device and their Adam state (the optimizer's tensors)."""

    def __init__(self, kind: str):
        self.kind = kind  # "fused", "cpu" (for_loop/foreach) or "single" (for_loop)
        self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.steps = [], [], [], [], []
        self.denoms: list[torch.Tensor] = []
        self.one = torch.ones((), dtype=torch.float32)

    def add(self, p: torch.Tensor, state: dict) -> None:
        self.params.append(p)
        self.grads.append(p.grad)
        self.exp_avgs.append(state["exp_avg"])
        self.exp_avg_sqs.append(state["exp_avg_sq"])
        self.steps.append(state["step"])
        self.denoms.append(torch.empty_like(p))


class AdamUpdate:
    """optimizer.step() for Adam, minus its per-call Python bookkeeping.

    Performs the operations of torch.optim.Adam's own implementation for the
    optimizer's setting, on the optimizer's own state (so checkpoints are
    unchanged). fused calls the same torch._fused_adam_ kernel as _fused_adam.
    for_loop is _single_tensor_adam with its denominator written into a buffer
    instead of a fresh tensor; on the CPU each of its operations is issued for all
    tensors at once with a _foreach op (on the CPU these have no fused kernels: they
    loop over the same per-tensor kernels; that is also why torch's foreach Adam is
    the for_loop arithmetic there, and the foreach setting takes this path on the
    CPU). Anything else (the first step, which creates the state; foreach off the
    CPU; options this model does not use) goes to optimizer.step().
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.seen_state = None  # the optimizer.state dict the groups below were made for
        self.groups: list[_AdamTensors] = []

    def __call__(self) -> None:
        if self.optimizer.state is not self.seen_state and not self.refresh():
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        with torch.no_grad():
            for g in self.groups:
                if g.kind == "fused":
                    self.fused(g, lr, beta1, beta2, eps)
                elif g.kind == "cpu":
                    self.single_tensor_cpu(g, lr, beta1, beta2, eps)
                else:
                    self.single_tensor(g, lr, beta1, beta2, eps)

    def refresh(self) -> bool:
        """Collect the state tensors by device; False if this path does not apply."""
        opt = self.optimizer
        if len(opt.param_groups) != 1:
            return False
        group = opt.param_groups[0]
        params = group["params"]
        plain = (
            group["weight_decay"] == 0
            and not group["amsgrad"]
            and not group["maximize"]
            and not group["capturable"]
            and not group["differentiable"]
            and not group.get("decoupled_weight_decay", False)
            and isinstance(group["lr"], float)
            and all(p.grad is not None and p in opt.state and opt.state[p] for p in params)
        )
        if not plain or (group["foreach"] and any(p.device.type != "cpu" for p in params)):
            return False
        by_device: dict = {}
        for p in params:
            kind = "fused" if group["fused"] else "cpu" if p.device.type == "cpu" else "single"
            by_device.setdefault(p.device, _AdamTensors(kind)).add(p, opt.state[p])
        self.groups = list(by_device.values())
        self.seen_state = opt.state
        return True

    @staticmethod
    def fused(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float) -> None:
        """torch.optim.adam._fused_adam."""
        torch._foreach_add_(g.steps, 1)
        torch._fused_adam_(
            g.params,
            g.grads,
            g.exp_avgs,
            g.exp_avg_sqs,
            [],
            g.steps,
            amsgrad=False,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    @staticmethod
    def single_tensor(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float) -> None:
        """torch.optim.adam._single_tensor_adam."""
        for param, grad, exp_avg, exp_avg_sq, step_t, denom in zip(
            g.params, g.grads, g.exp_avgs, g.exp_avg_sqs, g.steps, g.denoms
        ):
            step_t += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    @staticmethod
    def single_tensor_cpu(g: _AdamTensors, lr: float, beta1: float, beta2: float, eps: float):
        """_single_tensor_adam's operations, each one for all the tensors at once."""
        torch._foreach_add_(g.steps, g.one, alpha=1.0)  # step_t += 1
        torch._foreach_lerp_(g.exp_avgs, g.grads, 1 - beta1)
        torch._foreach_mul_(g.exp_avg_sqs, beta2)
        torch._foreach_addcmul_(g.exp_avg_sqs, g.grads, g.grads, 1 - beta2)
        steps = [step_t.item() for step_t in g.steps]
        for exp_avg_sq, denom in zip(g.exp_avg_sqs, g.denoms):
            torch.sqrt(exp_avg_sq, out=denom)
        torch._foreach_div_(g.denoms, [(1 - beta2**step) ** 0.5 for step in steps])
        torch._foreach_add_(g.denoms, eps)
        step_sizes = [-(lr / (1 - beta1**step)) for step in steps]
        torch._foreach_addcdiv_(g.params, g.exp_avgs, g.denoms, step_sizes)


# ---------------------------------------------------------------- the step


class _Chunk:
    """One micro-batch: rows [start, end) of the batch, and views of the step's buffers."""

    def __init__(self, start: int, end: int, buffers: dict):
        self.rows = slice(start, end)
        for name, buffer in buffers.items():
            setattr(self, name, buffer[start:end])
        self.g_logits_t, self.g_h_t = self.g_logits.t(), self.g_h.t()


class KernelStep:
    """One training step (forward, backward, Adam) written out kernel by kernel.

    It computes exactly what ``AutogradStep`` computes: the forward and backward
    passes call the ATen kernels that autograd calls for this model (addmm,
    _log_softmax, nll_loss and the backward formulas of derivatives.yaml, with the
    same operand layouts), micro-batch gradients are summed in the order of
    pipelined_backward's backward passes (one per micro-batch, in order), and AdamUpdate
    performs torch.optim.Adam's operations. What it drops is overhead: no autograd graph,
    no allocation per batch (every intermediate and gradient is written with out= into buffers made
    once), no zero_grad (gradients are overwritten, not accumulated), no per-call
    optimizer bookkeeping, no host synchronisation.
    """

    def __init__(self, model: ModelParallelMLP, optimizer, batch_size: int, microbatches: int):
        if any(device.type != "cpu" for device in model.devices):
            raise ValueError(
                f"the hand-written step runs on the CPU only (where it is proven bitwise "
                f"autograd's), not on {[str(d) for d in model.devices]}: use AutogradStep"
            )
        self.model, self.microbatches = model, microbatches
        (lin1, _), lin2 = model.stages
        self.params = [lin1.weight, lin1.bias, lin2.weight, lin2.bias]
        self.w1, self.b1, self.w2, self.b2 = self.params
        with torch.no_grad():  # F.linear runs addmm(bias, x, weight.t()); views stay current
            self.w1t, self.w2t = self.w1.t(), self.w2.t()
        # Gradients are written into these (they are the parameters' .grad); with
        # micro-batches, each further chunk's gradient goes to `partial` and is added.
        self.grads = {p: torch.zeros_like(p) for p in self.params}
        self.partial = {p: torch.empty_like(p) for p in self.params}
        self.attach_grads()
        self.adam = AdamUpdate(optimizer)

        d0, d1 = model.devices
        hidden = lin1.out_features

        def buffer(columns, device):
            return torch.empty((batch_size, columns), dtype=torch.float32, device=device)

        self.buffers = {
            "h": buffer(hidden, d0),  # x W1^T + b1
            "a": buffer(hidden, d0),  # stage 0's output, log_softmax(h)
            "logits": buffer(OUTPUT_SIZE, d1),
            "logp": buffer(OUTPUT_SIZE, d1),  # cross_entropy's log_softmax
            "g_logp": buffer(OUTPUT_SIZE, d1),
            "g_logits": buffer(OUTPUT_SIZE, d1),
            "g_a1": buffer(hidden, d1),
            "g_h": buffer(hidden, d0),
        }
        # On one device the activation and its gradient "move" to themselves, as .to() does.
        self.buffers["a1"] = self.buffers["a"] if d0 == d1 else buffer(hidden, d1)
        self.buffers["g_a"] = self.buffers["g_a1"] if d0 == d1 else buffer(hidden, d0)
        self.total_weight = torch.empty(microbatches, dtype=torch.float32, device=d1)
        self.chunk_losses = torch.empty(microbatches, dtype=torch.float32, device=d1)
        self.plans: dict[int, tuple] = {}
        self.timeline = None  # a fmnist.engine.timeline.Timeline while steps are being recorded

    def attach_grads(self) -> None:
        for p, grad in self.grads.items():
            if p.grad is not grad:
                p.grad = grad

    def plan(self, rows: int) -> tuple:
        """The micro-batches of a batch of ``rows`` rows, split as Tensor.chunk splits."""
        if rows not in self.plans:
            size = -(-rows // self.microbatches)
            chunks = []
            for i, start in enumerate(range(0, rows, size)):
                chunk = _Chunk(start, min(start + size, rows), self.buffers)
                chunk.total_weight, chunk.loss = self.total_weight[i], self.chunk_losses[i]
                chunks.append(chunk)
            one = torch.ones((), device=self.model.devices[1])
            if self.microbatches == 1:  # F.cross_entropy(out, y): the mean; backward from 1
                self.plans[rows] = (chunks, one, REDUCTION_MEAN)
            else:  # sum of the chunks' summed losses / rows: d loss / d chunk sum = 1 / rows
                self.plans[rows] = (chunks, one / rows, REDUCTION_SUM)
        return self.plans[rows]

    def __call__(self, x, y, loss_out: torch.Tensor) -> None:
        """Train on the batch (x, y); its loss is written into the 0-dim ``loss_out``."""
        chunks, seed, reduction = self.plan(x.shape[0])
        self.attach_grads()
        with torch.no_grad():
            self.pipelined(chunks, x, y, seed, reduction, loss_out)
        self.adam()

    def pipelined(self, chunks, x, y, seed, reduction, loss_out) -> None:
        """pipelined_backward's order: forward at tick t stage s on chunk t - s, then the
        backward passes chunk by chunk in order (gradients accumulate in that order)."""
        n, span = len(chunks), self.span
        xs = [x[c.rows] for c in chunks]
        ys = [y[c.rows] for c in chunks]
        for tick in range(n + 1):
            if tick < n:
                with span(0, tick, "forward"):
                    self.forward_stage0(chunks[tick], xs[tick])
            if tick > 0:
                c = chunks[tick - 1]
                with span(1, tick - 1, "forward"):
                    self.forward_stage1(c, ys[tick - 1], reduction, c.loss)
        for i, c in enumerate(chunks):
            with span(1, i, "backward"):
                self.backward_stage1(c, ys[i], seed, reduction, first=i == 0)
            with span(0, i, "backward"):
                self.backward_stage0(c, xs[i], first=i == 0)
        if n == 1:  # the tutorial's mean
            loss_out.copy_(chunks[0].loss)
            return
        # microbatch_loss and pipelined_backward: 0 + sum_0 / rows + sum_1 / rows + ...
        loss_out.copy_(chunks[0].loss.div_(x.shape[0]))
        for chunk in chunks[1:]:
            loss_out.add_(chunk.loss.div_(x.shape[0]))

    def span(self, stage: int, microbatch: int, phase: str):
        """Where a Timeline records the step, its span; else nothing."""
        if self.timeline is None:
            return _NOT_RECORDED
        return self.timeline.span(stage, microbatch, phase)

    def forward_stage0(self, c: _Chunk, x) -> None:
        torch.addmm(self.b1, x, self.w1t, out=c.h)
        torch._log_softmax(c.h, 1, False, out=c.a)
        if c.a1 is not c.a:
            c.a1.copy_(c.a, non_blocking=c.a1.is_cuda)

    def forward_stage1(self, c: _Chunk, y, reduction: int, loss) -> None:
        torch.addmm(self.b2, c.a1, self.w2t, out=c.logits)
        torch._log_softmax(c.logits, 1, False, out=c.logp)
        torch.ops.aten.nll_loss_forward.output(
            c.logp, y, None, reduction, IGNORE_INDEX, output=loss, total_weight=c.total_weight
        )

    def backward_stage1(self, c: _Chunk, y, seed, reduction: int, first: bool) -> None:
        torch.ops.aten.nll_loss_backward.grad_input(
            seed, c.logp, y, None, reduction, IGNORE_INDEX, c.total_weight, grad_input=c.g_logp
        )
        torch._log_softmax_backward_data(c.g_logp, c.logp, 1, torch.float32, out=c.g_logits)
        # addmm's backward: weight.t() is column-major, so mm_mat2_backward computes
        # grad.t() @ input; the bias was broadcast over the rows: its gradient is the
        # column sum (sum_to).
        target = self.grads if first else self.partial
        torch.mm(c.g_logits_t, c.a1, out=target[self.w2])
        torch.sum(c.g_logits, 0, out=target[self.b2])
        if not first:
            self.grads[self.w2].add_(self.partial[self.w2])
            self.grads[self.b2].add_(self.partial[self.b2])
        # mm_mat1_backward: grad @ weight, unless the input is column-major (only a
        # 1 x 1 activation is: hidden size 1 and a one-row chunk).
        if c.a1.stride(0) == 1 and c.a1.stride(1) == c.a1.shape[0]:
            c.g_a1.copy_(self.w2t.mm(c.g_logits_t).t())
        else:
            torch.mm(c.g_logits, self.w2, out=c.g_a1)
        if c.g_a is not c.g_a1:
            c.g_a.copy_(c.g_a1, non_blocking=c.g_a.is_cuda)

    def backward_stage0(self, c: _Chunk, x, first: bool) -> None:
        torch._log_softmax_backward_data(c.g_a, c.a, 1, torch.float32, out=c.g_h)
        target = self.grads if first else self.partial
        torch.mm(c.g_h_t, x, out=target[self.w1])
        torch.sum(c.g_h, 0, out=target[self.b1])
        if not first:
            self.grads[self.w1].add_(self.partial[self.w1])
            self.grads[self.b1].add_(self.partial[self.b1])
