"""Muon's optimizer step: tinyllm's batched Newton-Schulz beside torch.optim.Muon, same matrices, one run.

    python benchmarks/bench_muon.py --json benchmarks/results/muon_cpu.json
    python benchmarks/bench_muon.py --tiny           # a smoke run

For each model size (the CPU preset's 0.8M-parameter model and the 6-layer, 384-wide throughput model),
the 2-D weight matrices inside the blocks, the ones Muon orthogonalises, get random gradients, and the
optimizer step is timed for:

- torch.optim.Muon (torch >= 2.9): one matrix at a time, Newton-Schulz in bf16;
- tinyllm's Muon with the iterations in fp32, and in bf16: same-shape matrices stacked and orthogonalised
  in one batched matmul per iteration (tinyllm picks bf16 where the device computes it natively: CUDA,
  CPUs with AVX512-BF16 or AMX; fp32 elsewhere, where bf16 is emulated).

The rows alternate, round after round, so a change in the machine's load hits them all; the median round is
reported. Only the step is timed (no forward or backward). Embeddings, the head and the norms, which both
would hand to AdamW, are left out, so the figures are the Muon part alone.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import torch

from tinyllm.model import GPT, ModelArgs
from tinyllm.optimizers import Muon, ns_dtype

SIZES = {
    "cpu preset (4 x 128)": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "mlp": "relu2"},
    "throughput model (6 x 384)": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
}
TINY = {"tiny (2 x 32)": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16}}


def block_matrices(size: dict[str, Any]) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    model = GPT(ModelArgs(vocab_size=65, bias=False, **size))
    return [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")]


def runner(make_opt, params: list[torch.nn.Parameter]):
    """runner(n): n optimizer steps on fixed random gradients; returns their wall time."""
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt = make_opt(params)

    def run(n: int) -> float:
        import time

        t0 = time.perf_counter()
        for _ in range(n):
            opt.step()
        return time.perf_counter() - t0

    return run


def optimizers() -> dict[str, Any]:
    rows: dict[str, Any] = {}
    if hasattr(torch.optim, "Muon"):
        rows["torch.optim.Muon (bf16, per matrix)"] = lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rows[f"tinyllm Muon ({name}, batched)"] = (
            lambda ps, dt=dt: Muon([{"params": ps, "use_muon": True, "lr": 0.02}], ns_dtype=dt))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=common.positive_int, default=5, help="steps per row per round")
    p.add_argument("--rounds", type=common.positive_int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--tiny", action="store_true", help="a tiny model, few steps: a smoke run")
    p.add_argument("--json", default="", help="also write the results to this file")
    a = p.parse_args(argv)
    if a.tiny:
        a.steps, a.rounds = 1, 1
    common.set_threads(a.threads)
    m = common.machine(torch.device("cpu"))
    print(f"machine: {common.describe(m)}", flush=True)
    auto = "bf16" if ns_dtype(torch.device("cpu")) == torch.bfloat16 else "fp32"
    print(f"tinyllm's choice on this CPU: {auto}", flush=True)

    results: dict[str, Any] = {}
    table_rows = []
    for size_name, size in (TINY if a.tiny else SIZES).items():
        params = block_matrices(size)
        runners = {name: runner(make, [torch.nn.Parameter(q.detach().clone()) for q in params])
                   for name, make in optimizers().items()}
        times = common.interleaved_rounds(runners, a.steps, a.rounds, warmup_steps=max(1, a.steps // 2))
        ms = {name: 1000 * common.summarize_times(t)["median_s"] for name, t in times.items()}
        ref = next(iter(ms.values()))
        results[size_name] = {"matrices": len(params), "params": sum(q.numel() for q in params),
                              "ms_per_step": ms, "rounds_s": times}
        for name, v in ms.items():
            table_rows.append([size_name, f"{results[size_name]['params']:,}", name, f"{v:,.1f}",
                               f"{ref / v:.2f}x"])
    print(common.table(["model", "Muon params", "optimizer", "ms/step (median)", "speed vs first row"],
                       table_rows))
    out = {"benchmark": "muon", "machine": m, "tinyllm_choice": auto, "load_avg_end": common.load_average(),
           "steps": a.steps, "rounds": a.rounds, "sizes": results}
    common.write_json(out, a.json)
    return out


if __name__ == "__main__":
    common.entry(main)
