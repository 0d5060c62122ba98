"""Optimizers torch does not ship in the form we want: Lion, and a Muon that is fast on CPUs.

Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign of an
interpolation between momentum and gradient, so every coordinate moves by exactly lr. Its updates are
larger than AdamW's, hence the paper's advice: an lr 3-10x smaller and a weight decay 3-10x larger.

Muon (Jordan et al., 2024): momentum for each 2-D weight matrix, orthogonalised by a few Newton-Schulz
iterations before the step, so every direction of the matrix moves at a similar rate. torch.optim.Muon runs
those iterations in bf16, which is fast on GPUs and CPUs with native bf16 but emulated, and ~20x slower,
on AVX2 CPUs. Here the iterations run in bf16 on CUDA and on CPUs with native bf16, in fp32 elsewhere,
and matrices of the same shape are stacked and orthogonalised together with batched matmuls (one call
instead of one per matrix).
Parameters outside the blocks' matrices (embeddings, head, norms, biases) get AdamW in the same optimizer,
so one object steps, saves and restores everything (and GradScaler can unscale it).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable

import torch

# Coefficients of the quintic Newton-Schulz iteration tuned for speed of convergence (Jordan et al., 2024).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = torch.lerp(p.grad, m, beta1).sign_()  # beta1*m + (1-beta1)*g
                p.add_(update, alpha=-group["lr"])
                m.lerp_(p.grad, 1 - beta2)
        return loss


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalise a batch of matrices (..., m, n): U V^T of their SVD, as a polynomial."""
    a, b, c = NS_COEFFS
    x = g.to(dtype).reshape(-1, *g.shape[-2:])
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the wide side: (m x m) products are the cheaper ones
        x = x.mT
    # Contiguous once, then each iteration is three batched matmuls with the scaling and sums folded into
    # baddbmm: 1.3x faster on a CPU than the same algebra written with @, * and + (benchmarks/README.md).
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)).contiguous()
    for _ in range(steps):
        xx = torch.bmm(x, x.mT)
        poly = torch.baddbmm(xx, xx, xx, beta=b, alpha=c)  # b*xx + c*xx@xx
        x = torch.baddbmm(x, poly, x, beta=a)  # a*x + poly@x
    if transposed:
        x = x.mT
    return x.reshape(g.shape).to(g.dtype)


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 where matmuls run natively in it (CUDA; CPUs with AVX512-BF16 or AMX, where it is ~2x faster than
    fp32), fp32 elsewhere (AVX2 CPUs emulate bf16, ~20x slower)."""
    if device.type == "cuda" or (device.type == "cpu" and _cpu_native_bf16()):
        return torch.bfloat16
    return torch.float32


@functools.cache
def _cpu_native_bf16() -> bool:
    from tinyllm.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


class Muon(torch.optim.Optimizer):
    """Groups with `use_muon=True` get Muon; the others get AdamW (decoupled weight decay)."""

    def __init__(self, param_groups: list[dict], lr: float = 0.02, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8, ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None):
        """ns_dtype: the Newton-Schulz iterations' dtype; None = the fast one for the device (ns_dtype())."""
        defaults = {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps, "weight_decay": 0.0,
                    "use_muon": False, "ns_steps": ns_steps}
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon(group, params)
            else:
                self._adamw(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        by_shape: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for p in params:
            by_shape[(tuple(p.shape), p.device)].append(p)
        for (shape, device), ps in by_shape.items():
            bufs = []
            for p in ps:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            grads = [p.grad for p in ps]
            torch._foreach_lerp_(bufs, grads, 1 - mu)  # buf = mu*buf + (1-mu)*g
            nesterov = torch.stack(torch._foreach_lerp(grads, bufs, mu))
            update = newton_schulz(nesterov, group["ns_steps"], self.ns_dtype or ns_dtype(device))
            # Orthogonal updates have unit singular values; scale tall matrices up so the per-element step
            # size does not shrink with the aspect ratio.
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_add_(ps, list(update.unbind(0)), alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        """AdamW with foreach ops: a handful of kernel launches for the whole group instead of seven per tensor,
        which counts on a GPU where a small model's step is bound by launches (the same arithmetic, in the same
        order, as the per-tensor update)."""
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        by_step: dict[int, list[torch.Tensor]] = defaultdict(list)
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0  # a Python int: reading it never syncs with the device
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            by_step[state["step"]].append(p)  # one group, unless a tensor had no gradient at some step
        for step, ps in by_step.items():
            grads = [p.grad for p in ps]
            ms = [self.state[p]["exp_avg"] for p in ps]
            vs = [self.state[p]["exp_avg_sq"] for p in ps]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
            denom = torch._foreach_div(vs, 1 - beta2**step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, ms, denom, value=-lr / (1 - beta1**step))


def muon_param_groups(model: torch.nn.Module, cfg) -> list[dict]:
    """Muon for the 2-D weight matrices inside the blocks; AdamW rules for everything else."""
    from tinyllm.model import param_groups

    muon = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and n.startswith("blocks.")]
    ids = {id(p) for p in muon}
    rest = [g | {"params": [p for p in g["params"] if id(p) not in ids]} for g in param_groups(model, cfg.weight_decay)]
    groups = [{"params": muon, "use_muon": True, "lr": cfg.muon_lr, "weight_decay": cfg.weight_decay}]
    groups += [g | {"use_muon": False, "lr": cfg.lr} for g in rest if g["params"]]
    return groups
