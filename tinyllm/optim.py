"""Optimizer factory and learning-rate schedules.

The learning rate is a pure function of the step (as nanoGPT's get_lr), so there is no scheduler state
to save and resume is exact by construction. The one exception is a time-budgeted run (--max_steps 0):
after the warmup its schedule follows the fraction of --max_time spent, which no step count can know
in advance (such a run is not reproducible to the bit in any case: where it stops depends on the clock).
Each param group keeps its own base lr (Muon's matrices use --muon_lr, everything else --lr); the
schedule scales all of them by the same factor.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from tinyllm.errors import UserError
from tinyllm.model import param_groups


def lr_factor(step: int, cfg: Any, elapsed: float = 0.0) -> float:
    """Multiplier of the base lr at the 0-based optimizer step `step`.

    Warmup: step s < W uses (s+1)/W, so the last warmup step is at the full lr. Then, by --lr_schedule:
    constant stays at 1; cosine and linear decay from 1 at step W to lr_min/lr at the last step before
    --lr_decay_steps (default max_steps); wsd stays at 1 until --lr_stable_steps after the warmup (default:
    until the last --lr_decay_fraction, 20%, of the decay end remains), then decays linearly to lr_min/lr at
    the same last step. After it: lr_min/lr.
    With --max_steps 0 the same shapes are laid over time: progress is `elapsed` / --max_time (wsd decays
    over the last --lr_decay_fraction of the time).
    """
    warmup = cfg.lr_warmup_steps
    floor = cfg.lr_min / cfg.lr
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.max_steps == 0:
        return _time_factor(min(1.0, elapsed / cfg.max_time), cfg.lr_schedule, floor, cfg.lr_decay_fraction)
    last = (cfg.lr_decay_steps or cfg.max_steps) - 1
    start = warmup
    if cfg.lr_schedule == "wsd":
        stable_end = int((1 - cfg.lr_decay_fraction) * (last + 1))
        start = warmup + cfg.lr_stable_steps if cfg.lr_stable_steps else max(warmup, stable_end)
        if step < start:
            return 1.0
    if step >= last:
        return floor
    progress = (step - start) / max(1, last - start)
    if cfg.lr_schedule == "cosine":
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)  # linear, and wsd's decay


def _time_factor(done: float, schedule: str, floor: float, decay_fraction: float = 0.2) -> float:
    """lr factor after the warmup of a time-budgeted run, `done` being the fraction of the time spent."""
    if schedule == "wsd":
        if done < 1 - decay_fraction:
            return 1.0
        done = (done - (1 - decay_fraction)) / decay_fraction
    if schedule == "cosine":
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * done))
    return floor + (1.0 - floor) * (1.0 - done)  # linear, and wsd's decay


def get_lr(step: int, cfg: Any, elapsed: float = 0.0) -> float:
    """The learning rate of the main (--lr) parameter groups at `step` (`elapsed`: seconds of training so
    far, used only by a time-budgeted run)."""
    return cfg.lr * lr_factor(step, cfg, elapsed)


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        from tinyllm.optimizers import Muon, muon_param_groups

        opt: torch.optim.Optimizer = Muon(muon_param_groups(model, cfg), momentum=cfg.muon_momentum, betas=betas,
                                          ns_steps=cfg.muon_ns_steps)
    else:
        groups = param_groups(model, cfg.weight_decay)
        if cfg.optimizer == "lion":
            from tinyllm.optimizers import Lion

            opt = Lion(groups, lr=cfg.lr, betas=betas)
        elif cfg.optimizer == "adamw8bit":
            opt = _adamw8bit(groups, cfg, betas)
        else:
            # The fused kernel is one launch for all parameters on CUDA and vectorised on CPU; both are
            # deterministic, which the bit-identical resume promise relies on.
            opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=device.type in ("cuda", "cpu"))
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def import_bitsandbytes() -> Any:
    """bitsandbytes, imported offline: on a CPU with AVX512-BF16 it asks the Hugging Face Hub for an optional
    4-bit kernel when it is imported (with the `kernels` package, which transformers brings). tinyllm downloads
    nothing while it runs, and its 8-bit AdamW does not use that kernel, so the Hub stays offline and the
    warnings about that kernel are left out."""
    import logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet = [logging.getLogger(name) for name in ("bitsandbytes.backends.cpu.ops", "kernels")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError:
        raise UserError('--optimizer adamw8bit needs bitsandbytes: pip install -e ".[bnb]"') from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return bitsandbytes


def _adamw8bit(groups: list[dict], cfg: Any, betas: tuple[float, float]) -> torch.optim.Optimizer:
    bnb = import_bitsandbytes()
    try:
        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=betas)
    except (RuntimeError, NotImplementedError) as e:
        raise UserError(f"--optimizer adamw8bit: bitsandbytes cannot run here ({e}); use --optimizer adamw") from None


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
