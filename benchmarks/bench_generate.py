"""Generation speed with and without the KV cache.

    python benchmarks/bench_generate.py --threads 1                     # default architecture
    python benchmarks/bench_generate.py --threads 1 --config config/modern_char.json --json out/bench_gen.json

The model is built from a preset's model settings with block_size set by --block_size (256), with random
weights: speed does not depend on them. Each mode generates --new_tokens (500) tokens greedily from a
one-token prompt, so the context fills up and is cut at the window edge (its last block_size // 2 tokens
kept) as in real use. The modes alternate, round after round, so a change in the machine's load hits both;
the best round is reported (the least disturbed by other work), with the median beside it. The two modes
must produce the same tokens, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch

from tinyllm import config as C
from tinyllm.generate import SamplingParams, generate
from tinyllm.model import GPT, ModelArgs

MODES = {"recompute": False, "kv_cache": True}


def run_once(model: GPT, n: int, kv_cache: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    params = SamplingParams(temperature=0, kv_cache=kv_cache)
    t0 = time.perf_counter()
    out = torch.cat(list(generate(model, prompt, n, params)), dim=1)
    common.sync(device)
    return time.perf_counter() - t0, out.cpu()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(C.DEFAULT_CONFIG_PATH), help="preset whose model settings to use")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--new_tokens", type=common.positive_int, default=500)
    p.add_argument("--vocab_size", type=int, default=65, help="65 = tinyshakespeare's characters")
    p.add_argument("--rounds", type=common.positive_int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--json", default="", help="also write the results to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    common.set_threads(a.threads)
    cfg = C.validate(C.from_dict({**C.load_json(a.config), "block_size": a.block_size}))
    torch.manual_seed(0)
    from tinyllm.device import resolve_device

    device = resolve_device(a.device)
    model = GPT(ModelArgs.from_config(cfg, a.vocab_size)).to(device).eval()
    m = common.machine(device)

    for kv in MODES.values():  # warm-up: first-call allocations and kernel selection
        run_once(model, min(20, a.new_tokens), kv, device)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    tokens = {}
    for _ in range(a.rounds):
        for mode, kv in MODES.items():
            dt, tokens[mode] = run_once(model, a.new_tokens, kv, device)
            seconds[mode].append(dt)
    if not torch.equal(tokens["recompute"], tokens["kv_cache"]):
        raise SystemExit("error: cached and recomputed generation produced different tokens")

    best = {mode: min(s) for mode, s in seconds.items()}
    result = {
        "benchmark": "generate", "machine": m, "config": Path(a.config).name, "block_size": a.block_size,
        "new_tokens": a.new_tokens, "params": model.num_params(), "rounds": a.rounds, "seconds": seconds,
        "tokens_per_sec_best": {mode: a.new_tokens / t for mode, t in best.items()},
        "tokens_per_sec_median": {mode: a.new_tokens / statistics.median(s) for mode, s in seconds.items()},
        "speedup_best": best["recompute"] / best["kv_cache"],
        "speedup_median": statistics.median(seconds["recompute"]) / statistics.median(seconds["kv_cache"]),
        "same_tokens": True,
    }
    print(common.describe(m))
    print(f"{result['config']}, block_size {a.block_size}, {model.num_params():,} parameters, "
          f"{a.new_tokens} new tokens, {a.rounds} rounds")
    print(common.table(["mode", "tokens/s (best)", "tokens/s (median)", "seconds (best)"],
                       [[mode, f"{result['tokens_per_sec_best'][mode]:,.0f}",
                         f"{result['tokens_per_sec_median'][mode]:,.0f}", f"{best[mode]:.2f}"] for mode in MODES]))
    print(f"the cache is {result['speedup_best']:.1f}x faster (best rounds), {result['speedup_median']:.1f}x "
          "(medians); identical tokens")
    common.write_json(result, a.json)
    return result


if __name__ == "__main__":
    common.entry(main)
