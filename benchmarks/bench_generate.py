"""Generation speed with and without the KV cache.

    python benchmarks/bench_generate.py                       # default architecture, block 256, 500 tokens
    python benchmarks/bench_generate.py --config config/modern_char.json --json out/bench_generate.json

The model comes from a preset's model settings (random weights: speed does not depend on them), with
block_size set by --block_size. Each mode generates --new_tokens tokens greedily from a one-token prompt,
so the context fills up and is cut at the window edge like in real use; the best of --repeats runs is
reported (the least disturbed by other work on the machine), with the median beside it. The two modes
must produce the same tokens, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinyllm import config as C  # noqa: E402
from tinyllm.generate import SamplingParams, generate  # noqa: E402
from tinyllm.model import GPT, ModelArgs  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(model: GPT, n: int, kv_cache: bool) -> tuple[float, torch.Tensor]:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    params = SamplingParams(temperature=0, kv_cache=kv_cache)
    t0 = time.perf_counter()
    out = torch.cat(list(generate(model, prompt, n, params)), dim=1)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(C.DEFAULT_CONFIG_PATH), help="preset whose model settings to use")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--vocab_size", type=int, default=65, help="65 = tinyshakespeare's characters")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--json", default="", help="also write the results to this file")
    a = p.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = C.validate(C.from_dict({**C.load_json(a.config), "block_size": a.block_size}))
    torch.manual_seed(0)
    model = GPT(ModelArgs.from_config(cfg, a.vocab_size)).eval()

    run_once(model, 20, True)  # warm-up: first-call allocations and kernel selection
    run_once(model, 20, False)
    times: dict[str, list[float]] = {"recompute": [], "kv_cache": []}
    outputs = {}
    for _ in range(a.repeats):
        for mode in times:
            dt, outputs[mode] = run_once(model, a.new_tokens, mode == "kv_cache")
            times[mode].append(dt)
    if not torch.equal(outputs["recompute"], outputs["kv_cache"]):
        raise SystemExit("error: cached and recomputed generation produced different tokens")

    best = {m: min(t) for m, t in times.items()}
    result = {
        "benchmark": "generate", "config": a.config, "block_size": a.block_size, "new_tokens": a.new_tokens,
        "params": model.num_params(), "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "seconds": times,
        "tokens_per_sec_best": {m: a.new_tokens / t for m, t in best.items()},
        "tokens_per_sec_median": {m: a.new_tokens / statistics.median(t) for m, t in times.items()},
        "speedup_best": best["recompute"] / best["kv_cache"],
        "same_tokens": True,
    }
    print(f"{result['cpu']} ({result['cpu_capability']}), torch {result['torch']}, {result['threads']} threads; "
          f"{Path(a.config).name}, block_size {a.block_size}, {model.num_params():,} parameters, "
          f"{a.new_tokens} new tokens, best of {a.repeats}")
    print("| mode | tokens/s (best) | tokens/s (median) | seconds (best) |")
    print("|---|---|---|---|")
    for m in times:
        print(f"| {m} | {result['tokens_per_sec_best'][m]:,.0f} | {result['tokens_per_sec_median'][m]:,.0f} "
              f"| {best[m]:.2f} |")
    print(f"speedup of the cache: {result['speedup_best']:.1f}x (identical tokens)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
