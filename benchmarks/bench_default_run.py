"""The default run as a new user meets it: wall clock and best validation loss of `python train_tinyllm.py`.

    python benchmarks/bench_default_run.py --json benchmarks/results/default_run_cpu.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/bench_default_run.py --json benchmarks/results/default_run_avx2.json

The command is the real one, `python train_tinyllm.py` with config/tiny_char_gpt.json, in a fresh process;
only --out_dir (a temporary folder) is added, and --no-progress (a progress bar in a pipe is noise). The
clock runs from the process's start to its exit: interpreter and torch start-up, data preparation,
evaluations, samples and checkpoints all count. The best validation loss and the last text sample are read
from the run's metrics.jsonl. The environment passes through, so the switches above measure an AVX2 CPU
without native bf16 on a newer one (the machine line says "emulated" then). The figure names the CPU,
its capability and the load average before and after each run (the wall clock of a shared machine is noisy).

Flags after `--` go to the command, so the same script measures the five-minute budget of the CPU preset
(300 s of training; its evaluations are off the training clock but on this wall clock, hence the larger
--target_wall):

    python benchmarks/bench_default_run.py --target_wall 420 --target_val 1.50 --json RESULT.json -- \
        --config config/shakespeare_char_cpu.json --max_steps 0 --max_time 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=common.positive_int, default=1, help="runs, one after the other")
    p.add_argument("--target_wall", type=float, default=180.0, help="wall-clock goal in seconds (reported)")
    p.add_argument("--target_val", type=float, default=1.55, help="best-val goal (reported)")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("extra", nargs="*", help="flags appended to the command after --, e.g. -- --max_steps 5")
    return p.parse_args(argv)


def one_run(extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "train_tinyllm.py", "--out_dir", tmp, "--no-progress", *extra]
        load = common.load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode == 2:  # the command refused its flags: its own one line says why
            from tinyllm.errors import UserError

            raise UserError(f"{' '.join(cmd[1:])}: {proc.stderr.strip().splitlines()[-1]}")
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise RuntimeError(f"the default run failed (exit status {proc.returncode}): {' '.join(cmd)}")
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if line]
        config = json.loads((Path(tmp) / "config.json").read_text())
    evals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    samples = [r["sample"] for r in rows if "sample" in r]
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2), "load_avg_before": load,
            "load_avg_after": common.load_average(),
            "best_val": min(r["val_loss"] for r in evals) if evals else None,
            "final_val": evals[-1]["val_loss"] if evals else None,
            "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
            "train_s": rows[-1]["time_s"], "steps": rows[-1]["step"],
            "evals": [{"step": r["step"], "val_loss": r["val_loss"], "train_eval_loss": r.get("train_eval_loss")}
                      for r in evals],
            "sample": samples[-1] if samples else "", "config": config,
            "log_head": proc.stdout.splitlines()[:3]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import torch

    m = common.machine(torch.device("cpu"))
    m["threads"] = torch.get_num_threads()  # what the run's own process gets (torch's default)
    print(f"machine: {common.describe(m)}", flush=True)
    runs = []
    for i in range(a.runs):
        r = one_run(a.extra)
        runs.append(r)
        print(f"run {i + 1}: {r['wall_s']:.1f} s wall clock ({r['train_s']:.1f} s of training, {r['steps']} steps), "
              f"best val {'-' if r['best_val'] is None else format(r['best_val'], '.4f')}", flush=True)
    rows = [[i + 1, f"{r['wall_s']:.1f} s", f"{r['train_s']:.1f} s", r["steps"],
             f"{r['best_val']:.4f}" if r["best_val"] is not None else "-",
             f"{r['final_train_loss']:.4f}" if r["final_train_loss"] is not None else "-",
             r["load_avg_before"][0] if r["load_avg_before"] else "?"] for i, r in enumerate(runs)]
    print(f"`python train_tinyllm.py` on {m['cpu']}, {m['cpu_capability']}, "
          f"{'native bf16' if m['native_bf16'] else 'no native bf16'}")
    print(common.table(["run", "wall clock", "training", "steps", "best val", "last train loss", "load before"],
                       rows))
    walls = sorted(r["wall_s"] for r in runs)
    vals = [r["best_val"] for r in runs if r["best_val"] is not None]
    verdict = {"wall_s_median": walls[len(walls) // 2], "best_val_max": max(vals) if vals else None,
               "within_wall": walls[len(walls) // 2] <= a.target_wall,
               "within_val": bool(vals) and max(vals) <= a.target_val}
    print(f"goal: <= {a.target_wall:.0f} s and best val <= {a.target_val}: wall {verdict['wall_s_median']:.1f} s "
          f"({'met' if verdict['within_wall'] else 'missed'}), best val {verdict['best_val_max']} "
          f"({'met' if verdict['within_val'] else 'missed'})")
    if runs[-1]["sample"]:
        print("last sample:\n" + runs[-1]["sample"])
    out = {"benchmark": "default_run", "machine": m, "load_avg_end": common.load_average(),
           "targets": {"wall_s": a.target_wall, "best_val": a.target_val}, "runs": runs} | verdict
    common.write_json(out, a.json)
    return out


if __name__ == "__main__":
    common.entry(main)
