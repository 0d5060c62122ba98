"""Optimizer factory and learning-rate schedules.

The learning rate is a pure function of the step (as nanoGPT's get_lr), so there is no scheduler state
to save and resume is exact by construction.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tinyllm.model import param_groups


def get_lr(step: int, cfg: Any) -> float:
    """LR for the 0-based optimizer step `step`: linear warmup reaching cfg.lr at step warmup-1, then
    cosine decay to cfg.lr_min at cfg.lr_decay_steps (default max_steps), then constant lr_min."""
    warmup = cfg.lr_warmup_steps
    decay_end = cfg.lr_decay_steps or cfg.max_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if step >= decay_end:
        return cfg.lr_min
    progress = (step - warmup) / max(1, decay_end - warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    # The fused kernel is one launch for all parameters on CUDA and vectorised on CPU; both are
    # deterministic, which the bit-identical resume promise relies on.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
