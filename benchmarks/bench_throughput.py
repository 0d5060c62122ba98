"""Training throughput: tinyllm (fp32, --amp) beside a plain eager fp32 PyTorch loop, same model, one run.

    python benchmarks/bench_throughput.py --compile --json benchmarks/results/throughput_cpu.json
    python benchmarks/bench_throughput.py --tiny          # a few seconds: checks that it runs

The model is the same for every row: n_layer 6, n_head 6, n_embd 384, block_size 256, batch_size 16 by
default (GPT-2 architecture, tinyllm's defaults), on the characters of data/tiny_corpus.txt. The rows are:

- baseline fp32: benchmarks/baseline.py, what one would write by hand;
- tinyllm fp32: tinyllm's Trainer.train_step, everything fp32;
- tinyllm --amp: the same with --amp (bf16 autocast where the device computes bf16 natively, else fp32);
- with --compile, also tinyllm --amp --compile;
- on a CUDA GPU also tinyllm fp32 --tf32 and, with --compile, --amp --compile --compile_mode reduce-overhead
  (the step's forward and backward replayed as CUDA graphs).

Timing interleaves the rows: each round runs --steps steps of every row in turn, so load from elsewhere on
the machine hits them alike; the median over --rounds rounds is reported, with the best beside it. Ratios are
against the baseline's median. MFU divides the PaLM-formula FLOPs (benchmarks/common.py) by the matmul peak
measured here in the row's compute dtype. Peak memory comes from a separate short process per row, so each
row's figure is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from baseline import GPT as BaselineGPT  # noqa: E402
from baseline import BaselineConfig, BaselineTrainer  # noqa: E402

from tinyllm.device import resolve_device  # noqa: E402
from tinyllm.precision import set_tf32  # noqa: E402

ROWS = {
    "baseline_fp32": "baseline (plain PyTorch, fp32)",
    "tinyllm_fp32": "tinyllm fp32",
    "tinyllm_amp": "tinyllm --amp",
    "tinyllm_amp_compile": "tinyllm --amp --compile",
    "tinyllm_fp32_tf32": "tinyllm fp32 --tf32",
    "tinyllm_amp_compile_graphs": "tinyllm --amp --compile (reduce-overhead)",
}
CUDA_ONLY = ("tinyllm_fp32_tf32", "tinyllm_amp_compile_graphs")  # elsewhere the same as another row
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "batch_size": 4, "steps": 2, "rounds": 1,
        "warmup": 1, "matmul_n": 256}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=common.positive_int, default=5, help="steps per row per round")
    p.add_argument("--rounds", type=common.positive_int, default=6, help="rounds; each runs every row once")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row before the rounds")
    p.add_argument("--matmul_n", type=int, default=2048, help="size of the matmuls that measure the peak")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--compile", action="store_true", help="add the compiled rows (tinyllm --amp --compile, and on CUDA "
                   "its CUDA-graph mode)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the per-row peak-memory processes")
    p.add_argument("--data_path", default=str(common.REPO / "data" / "tiny_corpus.txt"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes and counts: a smoke run")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--only", default="", help=argparse.SUPPRESS)  # internal: one row's memory probe
    a = p.parse_args(argv)
    if a.tiny:
        for k, v in TINY.items():
            setattr(a, k, v)
    return a


def row_names(compiled: bool, on_cuda: bool) -> list[str]:
    return [n for n in ROWS if (compiled or "compile" not in n) and (on_cuda or n not in CUDA_ONLY)]


class Row:
    """One configuration: its runner(n) -> seconds, model, compute dtype and how to clean up."""

    def __init__(self, name: str, a: argparse.Namespace, tmp: Path):
        self.name = name
        cfg_values = {"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.n_embd, "block_size": a.block_size,
                      "batch_size": a.batch_size, "data_path": a.data_path, "device": a.device, "eval_interval": 0,
                      "dropout": 0.0, "out_dir": str(tmp / name), "amp": "amp" in name,
                      "compile": "compile" in name, "tf32": "tf32" in name,
                      "compile_mode": "reduce-overhead" if "graphs" in name else "default"}
        cfg = common.tinyllm_config(cfg_values)
        if name == "baseline_fp32":
            from tinyllm.data import prepare

            self.device = resolve_device(cfg.device)
            tokenizer, train_ids, _, _ = prepare(cfg, None)  # the same characters, the same token ids
            torch.manual_seed(cfg.seed)
            bc = BaselineConfig(tokenizer.vocab_size, a.n_layer, a.n_head, a.n_embd, a.block_size)
            self.model = BaselineGPT(bc).to(self.device)
            bt = BaselineTrainer(self.model, train_ids.long().to(self.device), a.block_size, a.batch_size, lr=cfg.lr,
                                 min_lr=cfg.lr_min, warmup=cfg.lr_warmup_steps, decay_steps=cfg.max_steps)
            self.trainer, self.dtype = None, "fp32"
            run = _baseline_runner(bt, self.device)
        else:
            self.trainer = common.tinyllm_trainer(cfg)
            self.device = self.trainer.device
            self.model = self.trainer.model
            self.dtype = "tf32" if cfg.tf32 and self.device.type == "cuda" else self.trainer.precision.name
            run = common.tinyllm_step_runner(self.trainer)

        def run_own_tf32(n: int) -> float:  # TF32 is process-wide: each row sets its own before its steps
            set_tf32(self.device, cfg.tf32)
            return run(n)

        self.run = run_own_tf32

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()


def _baseline_runner(bt: BaselineTrainer, device: torch.device):
    import time

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            bt.step()
        common.sync(device)
        return time.perf_counter() - t0

    return run


def memory_probe(a: argparse.Namespace) -> None:
    """Internal (--only NAME): build one row in this fresh process, run a few steps, print its peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        row = Row(a.only, a, Path(tmp))
        common.reset_peak_memory(row.device)
        row.run(a.warmup + a.steps)
        print(json.dumps(common.peak_memory(row.device)))
        row.close()


def probe_memory(name: str, argv: list[str]) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pass_through(a: argparse.Namespace) -> list[str]:
    keys = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps", "warmup", "device", "threads",
            "data_path")
    return [x for k in keys for x in (f"--{k}", str(getattr(a, k)))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    common.set_threads(a.threads)
    if a.only:
        memory_probe(a)
        return {}
    load_start = common.load_average()  # before anything of ours runs
    names = row_names(a.compile, resolve_device(a.device).type == "cuda")
    # Memory first, each row in its own fresh process, while this one is still small.
    memory = {n: probe_memory(n, pass_through(a)) for n in names} if a.memory else {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = {n: Row(n, a, Path(tmp)) for n in names}
        device = rows["tinyllm_fp32"].device
        m = common.machine(device) | {"load_avg": load_start}
        print(f"machine: {common.describe(m)}", flush=True)
        peaks = common.measure_peaks(device, sorted({r.dtype for r in rows.values()} | {"fp32"}), a.matmul_n)
        print("measured matmul peak: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items()),
              flush=True)
        times = common.interleaved_rounds({n: r.run for n, r in rows.items()}, a.steps, a.rounds, a.warmup)
        for r in rows.values():
            r.close()
    load_end = common.load_average()

    tokens_per_step = a.batch_size * a.block_size
    results: dict[str, Any] = {}
    for n, r in rows.items():
        t = common.summarize_times(times[n])
        fpt = common.flops_per_token(r.model, a.n_layer, a.n_embd, a.block_size)
        tok_s = tokens_per_step / t["median_s"]
        results[n] = {"label": ROWS[n], "dtype": r.dtype, "ms_per_step": 1000 * t["median_s"],
                      "ms_per_step_best": 1000 * t["best_s"], "tokens_per_sec": tok_s,
                      "tokens_per_sec_best": tokens_per_step / t["best_s"], "flops_per_token": fpt,
                      "mfu": common.mfu(fpt, tok_s, peaks[r.dtype]), "seconds_per_step_rounds": times[n]}
    base = results["baseline_fp32"]["tokens_per_sec"]
    for r in results.values():
        r["vs_baseline"] = r["tokens_per_sec"] / base
    for n, mem in memory.items():
        results[n].update(mem)

    headers = ["run", "compute", "ms/step", "tokens/s", "vs baseline", "MFU"] + (["peak RSS MB"] if a.memory else [])
    if a.memory and device.type == "cuda":
        headers.append("peak CUDA MB")
    body = []
    for r in results.values():
        row = [r["label"], r["dtype"], f"{r['ms_per_step']:.1f}", f"{r['tokens_per_sec']:,.0f}",
               f"{r['vs_baseline']:.2f}x", f"{100 * r['mfu']:.1f}%"]
        row += [f"{r['peak_rss_mb']:,.0f}"] if a.memory else []
        row += [f"{r['peak_cuda_mb']:,.0f}"] if a.memory and device.type == "cuda" else []
        body.append(row)
    params = sum(p.numel() for p in rows["tinyllm_fp32"].model.parameters())
    print(f"model: n_layer {a.n_layer}, n_head {a.n_head}, n_embd {a.n_embd}, block_size {a.block_size}, "
          f"batch_size {a.batch_size}: {params / 1e6:.2f} M parameters; median of {a.rounds} rounds x {a.steps} steps")
    print(common.table(headers, body))
    for n in results:
        if n != "baseline_fp32":
            print(f"ratio {ROWS[n]} / baseline: {results[n]['vs_baseline']:.2f}x tokens/s")
    out = {"benchmark": "throughput", "machine": m, "load_avg_end": load_end, "matmul_peak_flops": peaks,
           "model": {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")}
           | {"params": params}, "steps": a.steps, "rounds": a.rounds, "warmup": a.warmup, "rows": results}
    common.write_json(out, a.json)
    return out


if __name__ == "__main__":
    common.entry(main)
