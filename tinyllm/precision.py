"""Mixed precision: which dtype to compute in, on which device, and whether gradients need scaling.

Master weights and optimizer states always stay fp32; only the forward pass runs under autocast.
- CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler (loss scaling, steps with inf/NaN
  gradients skipped, the scaler's state saved in the checkpoint).
- CPU: bf16 only where the CPU computes it natively (AVX512-BF16 or AMX). Elsewhere (AVX2) bf16 is
  emulated and several times slower than fp32, so `--amp` falls back to fp32 with a warning: it must never
  make a run slower.

Native bf16 needs both the hardware (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo) and kernels allowed to
use it. torch's documented switches can forbid the latter, and then bf16 is emulated although the flags are
there: ATEN_CPU_CAPABILITY=avx2 (or default) limits ATen's kernels, ONEDNN_MAX_CPU_ISA=AVX2 (or any ISA below
AVX512_CORE_BF16) limits oneDNN's matmuls. Both are honoured here, so
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` makes a Zen 4 or Sapphire Rapids
behave, and be detected, as an AVX2 laptop CPU (the benchmarks use this to measure AVX2 figures). Finally,
TINYLLM_NATIVE_BF16=0 or 1 overrides the detection outright.
"""

from __future__ import annotations

import contextlib
import os
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


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which bf16 dot products run natively
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL")


def bf16_kernels_disabled() -> str:
    """Why torch may not use the CPU's bf16 instructions in this process ("" = nothing forbids them):
    ATen's kernel capability (which honours ATEN_CPU_CAPABILITY) below AVX512, or ONEDNN_MAX_CPU_ISA below
    AVX512_CORE_BF16."""
    cap = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in cap.upper() and "AMX" not in cap.upper():
        return f"torch CPU capability {cap}" + (f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
                                               if os.environ.get("ATEN_CPU_CAPABILITY") else "")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and not isa.startswith(ONEDNN_BF16_ISAS):
        return f"ONEDNN_MAX_CPU_ISA={isa}"
    return ""


CAPABILITY_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def separate_compile_cache() -> str:
    """Give torch.compile a cache of its own for each setting of the capability switches, unless
    TORCHINDUCTOR_CACHE_DIR is already set; returns the directory chosen ("" = left alone). Inductor's cache
    does not tell them apart (torch 2.13): a CPU graph compiled under ATEN_CPU_CAPABILITY=avx2 and then loaded
    by a run without the switches corrupted the heap and aborted the run (measured here, reproducibly)."""
    held = [f"{k}={os.environ[k]}" for k in CAPABILITY_SWITCHES if os.environ.get(k, "").strip()]
    if not held:
        return ""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        base = default_cache_dir()
    except ImportError:  # older torch: its default place
        import getpass
        import tempfile
        base = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    # torch itself writes its default into the variable once it has compiled something in this process
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", base) not in ("", base):
        return ""
    tag = ".".join("".join(c if c.isalnum() or c == "_" else "-" for c in h) for h in held)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path = os.path.join(base, f"capability_{tag}")
    return path


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run natively: a CPU with bf16 dot-product instructions (AVX512-BF16) or AMX
    tiles, and torch allowed to use them (see the module docstring). TINYLLM_NATIVE_BF16=0/1 overrides."""
    override = os.environ.get("TINYLLM_NATIVE_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    return bool(cpu_flags() & BF16_FLAGS) and not bf16_kernels_disabled()


def cpu_capability() -> str:
    """torch's CPU capability, e.g. "AVX2", marked "emulated" where an environment switch holds a CPU with
    native bf16 below its own level (the figures then stand for an AVX2 CPU, measured on a newer one)."""
    cap = torch.backends.cpu.get_cpu_capability()
    why = bf16_kernels_disabled() if cpu_flags() & BF16_FLAGS else ""
    return f"{cap} (emulated: {why}, on a CPU with native bf16)" if why else cap


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
    cap = cpu_capability()
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


def set_tf32(device: torch.device, on: bool) -> bool:
    """Let fp32 matmuls on a CUDA device use TF32 tensor cores (or not: torch's default). Set both ways, so a
    process that trains twice (tests, the GUI) does not carry one run's choice into the next. Returns whether
    TF32 is now on for this device."""
    if device.type != "cuda":
        return False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; allow_tf32 is the older spelling
        matmul.fp32_precision = "tf32" if on else "ieee"
    else:
        matmul.allow_tf32 = on
    return on


def choose_precision(device: torch.device, amp: bool, warn: Callable[[str], None] = print,
                     tf32: bool = False) -> Precision:
    chosen = _choose_dtype(device, amp, warn)
    if set_tf32(device, tf32):
        chosen.note = "; ".join(filter(None, [chosen.note, "TF32 for fp32 matmuls"]))
    return chosen


def _choose_dtype(device: torch.device, amp: bool, warn: Callable[[str], None]) -> Precision:
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
