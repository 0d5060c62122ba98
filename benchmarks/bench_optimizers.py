"""Optimizers and precision on the CPU: val loss after a fixed training-time budget for adamw, lion and muon,
and fp32 vs --amp tokens/s, on tinyshakespeare (characters).

    python benchmarks/bench_optimizers.py --budget 60 --json benchmarks/results/optimizers_cpu.json
    python benchmarks/bench_optimizers.py --budget 5 --tiny      # a smoke run

Every run uses the preset's model and settings (default config/shakespeare_char_cpu_sprint.json) and changes only
the optimizer, with each optimizer's documented rates (OPTIMIZERS below). Each optimizer runs in a fresh
process, with its schedule sized to the budget: its steady-state speed is measured first on a throwaway
trainer, and max_steps is set to what fits in 97% of --budget seconds, so every run warms up, holds and
decays as the preset intends (--max_time, 10% above the budget, only guards against a machine that slows
down). The validation loss is then estimated from at least --eval_tokens tokens of the held-out text (the
same batches for every run).

The precision part times tinyllm's train_step in fp32 and with --amp for the same model, interleaved in
rounds (see bench_throughput.py), with each row's compute dtype: on a CPU without native bf16, --amp trains
in fp32 and the two rows should match.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PRESET = common.REPO / "config" / "shakespeare_char_cpu_sprint.json"
# Each optimizer's documented rates (docs/training.md, "Optimizer and learning rate"): Lion wants a ~10x lower lr
# and a higher decay.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1},
    "lion": {"optimizer": "lion", "lr": 3e-4, "weight_decay": 1.0, "lr_min": 1e-5},
    "muon": {"optimizer": "muon"},  # the preset's own muon_lr, lr and weight decay
}
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8, "eval_iters": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=60.0, help="seconds of training per optimizer")
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--preset", default=str(PRESET))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override preset settings for every run, the optimizers' own rates excepted "
                        "(e.g. --set n_layer=6 n_embd=192)")
    p.add_argument("--data_path", default=str(common.SHAKESPEARE))
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval_tokens", type=int, default=150_000, help="validation tokens per estimate, at least")
    p.add_argument("--calibrate_steps", type=int, default=30, help="timed steps that size each schedule")
    p.add_argument("--steps", type=common.positive_int, default=10, help="precision part: steps per row per round")
    p.add_argument("--rounds", type=common.positive_int, default=5, help="precision part: rounds")
    p.add_argument("--no-precision", dest="precision", action="store_false", help="skip the fp32 vs --amp part")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--tiny", action="store_true", help="a tiny model, few steps: a smoke run")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one optimizer, in its own process
    a = p.parse_args(argv)
    if a.tiny:
        a.eval_tokens, a.calibrate_steps, a.steps, a.rounds = 512, 3, 2, 1
    return a


def base_values(a: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    v = {"data_path": a.data_path, "seed": a.seed, "out_dir": out_dir}
    return v | (TINY if a.tiny else {}) | common.parse_sets(a.set)


def steps_per_second(cfg: Any, n: int) -> float:
    """Steady-state speed of a throwaway trainer: n untimed steps (first-touch of memory and kernels), then
    the median of three timed chunks of n/3 steps."""
    trainer = common.tinyllm_trainer(cfg)
    try:
        run = common.tinyllm_step_runner(trainer)
        run(n)
        chunk = max(1, n // 3)
        return chunk / statistics.median(run(chunk) for _ in range(3))
    finally:
        trainer.close()


def run_budget(a: argparse.Namespace, name: str, tmp: Path) -> dict[str, Any]:
    """Train with optimizer `name` for --budget seconds, schedule sized to fit; return the val loss."""
    from tinyllm.evaluation import evaluate

    values = base_values(a, str(tmp / name)) | OPTIMIZERS[name] | {"eval_interval": 0}
    probe = common.tinyllm_config(values | {"out_dir": str(tmp / f"{name}_probe")}, a.preset)
    rate = steps_per_second(probe, a.calibrate_steps)
    # The schedule ends just inside the budget; --max_time (a little above it) only guards a slow machine.
    steps = max(probe.lr_warmup_steps + 2, int(0.97 * a.budget * rate))
    cfg = common.tinyllm_config(values | {"max_steps": steps, "max_time": 1.1 * a.budget}, a.preset)
    trainer = common.tinyllm_trainer(cfg)
    try:
        load = common.load_average()
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
        iters = math.ceil(a.eval_tokens / (cfg.batch_size * cfg.block_size))
        est = common.tinyllm_config(values | {"eval_iters": iters}, a.preset)
        val = evaluate(trainer.eval_model, {"val": trainer.eval_splits["val"]}, est, trainer.device,
                       trainer.precision)["val"]
        p = trainer.progress
        return {"optimizer": name, "settings": OPTIMIZERS[name], "planned_steps": steps, "steps": p.step,
                "train_s": round(p.time_s, 2), "wall_s": round(wall, 2), "val_loss": round(val, 4),
                "eval_iters": iters, "load_avg_before": load}
    finally:
        trainer.close()


def precision_rows(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    trainers = {amp: common.tinyllm_trainer(common.tinyllm_config(
        base_values(a, str(tmp / f"amp_{amp}")) | {"amp": amp, "eval_interval": 0}, a.preset)) for amp in (False, True)}
    try:
        runners = {("amp" if amp else "fp32"): common.tinyllm_step_runner(t) for amp, t in trainers.items()}
        times = common.interleaved_rounds(runners, a.steps, a.rounds, warmup_steps=max(2, a.steps // 2))
        cfg = trainers[False].cfg
        tokens = cfg.batch_size * cfg.block_size
        out = {}
        for t, (name, per_step) in zip(trainers.values(), times.items(), strict=True):
            s = common.summarize_times(per_step)
            out[name] = {"compute": t.precision.name, "ms_per_step": 1000 * s["median_s"],
                         "tokens_per_sec": tokens / s["median_s"], "seconds_per_step_rounds": per_step,
                         "precision": t.precision.describe()}
        out["amp_vs_fp32"] = out["amp"]["tokens_per_sec"] / out["fp32"]["tokens_per_sec"]
        return out
    finally:
        for t in trainers.values():
            t.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    common.set_threads(a.threads)
    if a.worker:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_budget(a, a.worker, Path(tmp))
        common.report_to_parent(r)
        return r
    if not Path(a.data_path).is_file():
        raise SystemExit(f"error: --data_path {a.data_path} not found (tinyshakespeare lives in ../shared/data)")
    m = common.machine(torch.device("cpu"))
    print(f"machine: {common.describe(m)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [common.run_worker(__file__, [*argv, "--worker", name, "--json", ""]) for name in a.optimizers]
        prec = precision_rows(a, Path(tmp)) if a.precision else None

    print(f"val loss after {a.budget:.0f} s of training ({Path(a.preset).name}, seed {a.seed}; schedule sized to the "
          f"budget)")
    print(common.table(["optimizer", "settings", "steps", "train s", "val loss"],
                       [[r["optimizer"], ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "optimizer")
                         or "preset", r["steps"], f"{r['train_s']:.1f}", f"{r['val_loss']:.4f}"] for r in results]))
    if prec:
        print("fp32 vs --amp, the same model (median of rounds):")
        rows = [[n, prec[n]["compute"], f"{prec[n]['ms_per_step']:.1f}", f"{prec[n]['tokens_per_sec']:,.0f}"]
                for n in ("fp32", "amp")]
        print(common.table(["run", "compute", "ms/step", "tokens/s"], rows))
        print(f"ratio --amp / fp32: {prec['amp_vs_fp32']:.2f}x tokens/s")
    out = {"benchmark": "optimizers", "machine": m, "load_avg_end": common.load_average(), "budget_s": a.budget,
           "preset": a.preset, "seed": a.seed, "runs": results, "precision": prec}
    common.write_json(out, a.json)
    return out


if __name__ == "__main__":
    common.entry(main)
