"""Adam's update for the kernel-level CPU step: torch.optim.Adam's operations, no bookkeeping."""

from __future__ import annotations

import torch


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
