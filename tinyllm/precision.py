"""Mixed precision: which dtype to compute in, on which device, and whether gradients need scaling.

Master weights and optimizer states always stay fp32; only the forward pass runs under autocast.
- CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler (loss scaling, steps with inf/NaN
  gradients skipped, the scaler's state saved in the checkpoint).
- CPU: bf16 only where the CPU computes it natively (AVX512-BF16 or AMX). Elsewhere (AVX2) bf16 is
  emulated and several times slower than fp32, so `--amp` falls back to fp32 with a warning: it must never
  make a run slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16) or AMX tiles."""
    flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_description() -> str:
    """Model name and capability, printed beside every speed figure (CPUs here differ a lot)."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cap = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name} ({cap}, {bf16}, {torch.get_num_threads()} threads)"


@dataclass
class Precision:
    """The chosen compute dtype; `autocast()` wraps forward passes, `scaler` is set only for fp16."""

    device: torch.device
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        what = "fp32" if self.dtype == torch.float32 else f"{self.name} autocast (fp32 master weights)"
        if self.scaler is not None:
            what += " with loss scaling"
        return what + (f"; {self.note}" if self.note else "")


def choose_precision(device: torch.device, amp: bool, warn: Callable[[str], None] = print) -> Precision:
    if not amp:
        return Precision(device, torch.float32)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, torch.bfloat16)
        return Precision(device, torch.float16, scaler=torch.amp.GradScaler("cuda"))
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return Precision(device, torch.bfloat16, note="CPU has native bf16")
        warn("warning: --amp: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is emulated and "
             "slower than fp32; training in fp32")
        return Precision(device, torch.float32, note="--amp ignored: no native bf16 on this CPU")
    warn(f"warning: --amp is not supported on {device.type}; training in fp32")
    return Precision(device, torch.float32, note=f"--amp ignored on {device.type}")
