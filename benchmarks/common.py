"""What every benchmark shares: a description of the machine, its measured matmul peak, MFU, memory and output.

Model FLOPs per token (the PaLM formula, Chowdhery et al., 2022, appendix B):

    6 * N  +  12 * n_layer * n_embd * T

N counts the parameters that take part in matrix multiplies: the weights of every nn.Linear (the head
included, once, even when it is tied to the embedding). The embedding lookups are not matmuls and are left
out, as are norm gains and biases (a few thousand multiply-adds, not 2 FLOPs per weight). 6N is the forward
(2N) plus the backward (4N) of those matmuls; 12·n_layer·n_embd·T is the attention scores and the weighted
sum over T positions, forward and backward, counted over the full T×T square as the formula does (a causal
kernel skips about half of it; the convention is the same for every row, so ratios are unaffected).

MFU = FLOPs per token × tokens/s ÷ the peak this machine *measured* for large matmuls in the dtype the run
computes in (fp32, or bf16 under --amp). The peak is timed here, never taken from a datasheet, so MFU on a
2-core VM means "fraction of what this VM's matmul library really delivers".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks run as scripts from a clone, without an install
    sys.path.insert(0, str(REPO))

SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
# The documented switches that hold torch's CPU kernels at a lower instruction set; with all three at AVX2, a
# CPU with AVX-512 BF16 computes (and is detected) as an AVX2 CPU without native bf16.
from tinyllm.precision import CAPABILITY_SWITCHES as CAPABILITY_ENV  # noqa: E402

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- the machine ----------------------------------------------------------------------------------------

def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: recorded beside every figure (this machine is shared)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(device: torch.device) -> dict[str, Any]:
    from tinyllm.precision import cpu_capability, cpu_has_native_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model_name(),
        # e.g. "AVX2", or "AVX2 (emulated: ...)" where ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA hold a newer CPU
        # at AVX2 (tinyllm.precision): every figure says which CPU and capability it came from
        "cpu_capability": cpu_capability(),
        "capability_env": {k: os.environ[k] for k in CAPABILITY_ENV if k in os.environ},
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_avg": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(m: dict[str, Any]) -> str:
    bf16 = "native bf16" if m["native_bf16"] else "no native bf16"
    text = f"{m['cpu']} ({m['cpu_capability']}, {bf16}), {m['threads']} threads, torch {m['torch']}"
    if m.get("gpu"):
        text = f"{m['gpu']}; host {text}"
    load = m.get("load_avg")
    return text + (f"; load average {load[0]:.2f} at start" if load else "")


# --- timing and peak throughput -------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n×n×n matmuls in `dtype`: the practical peak of this machine's
    matmul library (on a CPU without native bf16, bf16's peak comes out low, as it really is)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)  # first call: allocation and kernel selection
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def measure_peaks(device: torch.device, dtypes: Sequence[str] = ("fp32", "bf16"), n: int = 2048) -> dict[str, float]:
    """Peaks by compute name; "tf32" is fp32 with TF32 matmuls (CUDA), every other one with TF32 off."""
    from tinyllm.precision import set_tf32

    peaks = {}
    for name in dtypes:
        set_tf32(device, name == "tf32")
        peaks[name] = measure_peak_flops(DTYPES[name], device, n)
    set_tf32(device, False)
    return peaks


# --- FLOPs and MFU --------------------------------------------------------------------------------------

def matmul_params(model: nn.Module) -> int:
    """Weights that take part in matmuls: every nn.Linear's weight, counted once (a tied head included)."""
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m) not in seen:
            seen.add(id(m))
            total += m.weight.numel()
    return total


def flops_per_token(model: nn.Module, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token by the PaLM formula (see the module docstring)."""
    return 6 * matmul_params(model) + 12 * n_layer * n_embd * seq_len


def mfu(flops_token: float, tokens_per_sec: float, peak_flops: float) -> float:
    return flops_token * tokens_per_sec / peak_flops


# --- memory ---------------------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak (the process's peak RSS cannot be reset: measure each row in its own process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: the kernel's high-water mark of its address space
    (VmHWM), else getrusage. (On Linux, getrusage's ru_maxrss of a child started by fork + exec also counts
    the parent's resident set at the fork, so a probe started by a large process would report the parent.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # bytes on macOS, KiB on Linux


def peak_memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


# --- running configurations side by side ----------------------------------------------------------------

def interleaved_rounds(runners: dict[str, Callable[[int], float]], steps: int, rounds: int,
                       warmup_steps: int) -> dict[str, list[float]]:
    """Seconds per step of each runner, measured in `rounds` rounds that visit every runner in turn, so a
    burst of load from elsewhere on the machine hits all of them alike. runner(n) runs n steps and returns
    their wall time. The first `warmup_steps` of each are run once, untimed."""
    for run in runners.values():
        run(warmup_steps)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(run(steps) / steps)
    return times


def summarize_times(per_step: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(per_step), "best_s": min(per_step), "rounds": len(per_step)}


# --- output ---------------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into docs/performance.md)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path | None) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {p}")


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def positive_int(text: str) -> int:
    """argparse type of counts (steps, rounds, runs, tokens): a bad one is argparse's one-line usage error."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def entry(main: Callable[[], Any]) -> None:
    """A benchmark script's entry point: bad settings (a tinyllm UserError, a worker that refused its own) are one
    line and exit status 2, as in tinyllm's commands."""
    from tinyllm.errors import exits_cleanly

    with exits_cleanly():
        main()


def parse_sets(pairs: Sequence[str], known: Sequence[str] | None = None, flag: str = "--set") -> dict[str, Any]:
    """KEY=VALUE pairs (numbers, true/false, else strings) into a dict of config overrides; with `known`, a key
    not in it is an error (a typo would otherwise be dropped unseen)."""
    from tinyllm.errors import UserError

    out = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or (known is not None and key not in known):
            choices = f"; one of {', '.join(known)}" if known is not None else ""
            raise UserError(f"{flag} {pair}: expected KEY=VALUE{choices}")
        for kind in (int, float):
            try:
                out[key] = kind(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


# --- tinyllm runs ---------------------------------------------------------------------------------------

def tinyllm_config(values: dict[str, Any], preset: str | Path | None = None) -> Any:
    """A validated tinyllm Config: dataclass defaults < the preset JSON (if any) < `values`; quiet, no samples,
    no periodic checkpoints (the benchmarks time training, not disk writes)."""
    from tinyllm import config as C

    base = C.load_json(preset) if preset else {}
    quiet = {"progress": False, "sample_interval": 0, "checkpoint_interval": 0, "overwrite": True}
    return C.validate(C.from_dict({**base, **quiet, **values}))


def tinyllm_trainer(cfg: Any) -> Any:
    """The real tinyllm Trainer (its data, model, optimizer, precision and train_step), single process."""
    from tinyllm import distributed
    from tinyllm.train import Trainer

    return Trainer(cfg, None, distributed.setup(False, "auto"))


def tinyllm_step_runner(trainer: Any) -> Callable[[int], float]:
    """runner(n): n optimizer steps of tinyllm's own train_step (forward, backward, clip, finite check,
    optimizer), with the step counter advanced and each step's finite flag read back one step later, as the
    training loop does; returns their wall time."""
    t = trainer.cfg.block_size

    def run(n: int) -> float:
        t0 = time.perf_counter()
        previous = True
        for _ in range(n):
            finite = trainer.train_step(t)[3]
            bool(previous)
            previous = finite
            trainer.progress.step += 1
        bool(previous)
        sync(trainer.device)
        return time.perf_counter() - t0

    return run


# --- one run per process --------------------------------------------------------------------------------

RESULT_TAG = "BENCH_RESULT "


def run_worker(script: str | Path, argv: Sequence[str]) -> dict[str, Any]:
    """Run `script argv` in a fresh Python process, echoing its output, and return the JSON it prints after
    RESULT_TAG. A training run measured after another one in the same process was up to 20% slower here
    (allocator and kernel-cache state), and a user trains one run per process, so each run gets its own."""
    import subprocess

    cmd = [sys.executable, str(script), *map(str, argv)]
    result = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT_TAG):
                result = json.loads(line[len(RESULT_TAG):])
            else:
                print(line, end="", flush=True)
    if proc.returncode == 2:  # it refused its settings, and said why on its stderr (shown above)
        from tinyllm.errors import UserError

        raise UserError(f"a benchmark run refused its settings (see above): {' '.join(cmd)}")
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark worker failed (exit status {proc.returncode}): {' '.join(cmd)}")
    return result


def report_to_parent(result: dict[str, Any]) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)
