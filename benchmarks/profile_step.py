"""Where a training step's time goes: torch.profiler over tinyllm's own train_step for a preset.

    python benchmarks/profile_step.py                                   # config/shakespeare_char_cpu_sprint.json
    python benchmarks/profile_step.py --preset config/tiny_char_gpt.json --set dropout=0.1
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/profile_step.py

It builds the real Trainer (data, model, optimizer, precision) as `train_tinyllm.py` would, runs a few
untimed warmup steps, then profiles --steps steps and prints two tables: the top operators by self CPU
time, and the step split into the phases the loop calls (forward and loss, backward, optimizer, the
rest: clipping, the finite check, data). The phase split comes from record_function ranges put around the
Trainer's own calls from here, so the training code carries nothing for it. Figures are per step and name the CPU.

On a CUDA device (`--set device=cuda`, or a GPU preset) it also profiles the GPU and prints the top kernels by
GPU time and how busy the GPU was: a step whose kernels add up to much less than its wall time is bound by
launching them (the case for CUDA graphs, --compile_mode reduce-overhead), not by the GPU's arithmetic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PRESET = common.REPO / "config" / "shakespeare_char_cpu_sprint.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=str(PRESET), help="tinyllm preset JSON to profile")
    p.add_argument("--data_path", default="", help="text to train on (default: the preset's, else the included "
                   "corpus)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset settings")
    p.add_argument("--steps", type=common.positive_int, default=20, help="profiled steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--top", type=int, default=15, help="operators to list")
    p.add_argument("--json", default="", help="also write the results to this file")
    return p.parse_args(argv)


def _wrap(obj: Any, name: str, label: str) -> None:
    """Put obj.name inside a profiler range called label (on the instance, so nothing else changes)."""
    import torch

    inner = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return inner(*args, **kwargs)

    setattr(obj, name, wrapped)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    common.set_threads(a.threads)
    import torch

    from tinyllm import config as C

    values = common.parse_sets(a.set)
    data_path = a.data_path or C.load_json(a.preset).get("data_path", "")
    if not Path(data_path).exists():
        print(f"no text at {data_path!r}: profiling on the included corpus", flush=True)
        data_path = str(common.REPO / "data" / "tiny_corpus.txt")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = common.tinyllm_config({"data_path": data_path, "out_dir": tmp, "eval_interval": 0, **values},
                                    a.preset)
        trainer = common.tinyllm_trainer(cfg)
        m = common.machine(trainer.device)
        print(f"machine: {common.describe(m)}", flush=True)
        print(f"preset {Path(a.preset).name} {' '.join(a.set)}: {cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}, "
              f"batch {cfg.batch_size}, optimizer {cfg.optimizer}, compute {trainer.precision.name}", flush=True)
        # Label the phases from outside: the model's forward, the loop's forward_backward (forward, loss and
        # backward of every micro-batch) and the optimizer's step; what remains is clipping, the finite check,
        # the schedule and the data.
        from tinyllm import train as train_module

        _wrap(trainer.model, "forward", "phase: model forward")
        _wrap(train_module, "forward_backward", "phase: forward + loss + backward")
        _wrap(trainer.optimizer, "step", "phase: optimizer step")
        run = common.tinyllm_step_runner(trainer)
        run(a.warmup)
        t0 = time.perf_counter()
        on_cuda = trainer.device.type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            run(a.steps)
        wall_ms = (time.perf_counter() - t0) * 1000 / a.steps
        trainer.close()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = sorted((e for e in events if not e.key.startswith("phase:")), key=lambda e: -e.self_cpu_time_total)
    rows = [[e.key[:60], e.count // a.steps, f"{e.self_cpu_time_total / a.steps / 1000:.2f}",
             f"{100 * e.self_cpu_time_total / total_us:.1f}%"] for e in ops[: a.top]]
    print(f"\n{wall_ms:.1f} ms per step (profiled, so a little slower than unprofiled); top operators by self time:")
    print(common.table(["operator", "calls/step", "self ms/step", "share"], rows))
    phases = {e.key.removeprefix("phase: "): e.cpu_time_total / a.steps / 1000
              for e in events if e.key.startswith("phase:")}
    fwd_bwd = phases.get("forward + loss + backward", 0.0)
    phases["backward (forward + loss + backward - model forward)"] = fwd_bwd - phases.get("model forward", 0.0)
    phases["the rest (clip, finite check, schedule, data)"] = wall_ms - fwd_bwd - phases.get("optimizer step", 0.0)
    print("\nphases (ms per step):")
    print(common.table(["phase", "ms/step", "share of step"],
                       [[k, f"{v:.1f}", f"{100 * v / wall_ms:.0f}%"] for k, v in phases.items()]))
    result = {"machine": m, "ms_per_step": wall_ms, "phases": phases,
              "top": [{"op": r[0], "calls": r[1], "self_ms": float(r[2])} for r in rows]}
    if on_cuda:
        result |= gpu_tables(events, a.steps, a.top, wall_ms)
    common.write_json(result, a.json)
    return result


def gpu_tables(events: Any, steps: int, top: int, wall_ms: float) -> dict[str, Any]:
    """The kernels by GPU time, and the GPU's busy share of the step's wall time. Only the kernels' own events
    count: the CPU operators that launched them carry the same GPU time again (as torch's own table knows)."""
    from torch.autograd import DeviceType

    kernels = (e for e in events if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0)
    gpu = sorted(kernels, key=lambda e: -e.self_device_time_total)
    busy_ms = sum(e.self_device_time_total for e in gpu) / steps / 1000
    rows = [[e.key[:60], e.count // steps, f"{e.self_device_time_total / steps / 1000:.3f}",
             f"{100 * e.self_device_time_total / steps / 1000 / busy_ms:.1f}%"] for e in gpu[:top]]
    launches = sum(e.count for e in gpu) / steps
    print(f"\nGPU: {busy_ms:.1f} ms of kernels per {wall_ms:.1f} ms step ({100 * busy_ms / wall_ms:.0f}% busy), "
          f"{launches:.0f} kernels per step; top kernels by GPU time:")
    print(common.table(["kernel / operator", "calls/step", "GPU ms/step", "share of GPU time"], rows))
    return {"gpu_busy_ms": busy_ms, "gpu_kernels_per_step": launches,
            "gpu_top": [{"op": r[0], "calls": r[1], "gpu_ms": float(r[2])} for r in rows]}


if __name__ == "__main__":
    common.entry(main)
