"""Time to a validation loss on tinyshakespeare (characters): tinyllm's CPU recipe beside a baseline baby GPT.

    python benchmarks/bench_time_to_loss.py --seeds 1337 1338 1339 \\
        --json benchmarks/results/time_to_loss_cpu_native.json
    python benchmarks/bench_time_to_loss.py --target 1.88 --time_cap 300 --seeds 1337 1338

The baseline is nanoGPT's CPU "baby GPT" written by hand in benchmarks/baseline.py: 4 layers, 4 heads, 128
wide, block 64, batch 12, head tied to the embedding, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1),
100 warmup steps, cosine to 1e-4 at step 2000, then 1e-4, gradients clipped at 1. tinyllm runs its preset
(config/shakespeare_char_cpu_sprint.json) through its own training loop, schedule and evaluation included.

Each run trains until its validation loss is <= --target or --time_cap seconds of training have passed.
The clock counts training only: evaluations (and the best-checkpoint saves they trigger in tinyllm) are
off it (tinyllm's own training clock leaves them out), so how often each side evaluates does not change
its time. Both estimate the validation loss on the same held-out text (the last 10% of the file) from at
least --eval_tokens tokens, so a lucky estimate cannot carry either one. Runs go one after the other, each
in a fresh process (as a user trains); the load average is recorded before each.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from baseline import GPT as BaselineGPT  # noqa: E402
from baseline import BaselineConfig, BaselineTrainer  # noqa: E402

from tinyllm.device import resolve_device  # noqa: E402

PRESET = common.REPO / "config" / "shakespeare_char_cpu_sprint.json"
BABY = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4,
        "warmup": 100, "decay_steps": 2000, "dropout": 0.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=1.88, help="validation loss to reach")
    p.add_argument("--time_cap", type=float, default=300.0, help="seconds of training at most, per run")
    p.add_argument("--preset", default=str(PRESET), help="tinyllm preset to time")
    p.add_argument("--data_path", default=str(common.SHAKESPEARE))
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--eval_tokens", type=int, default=100_000, help="validation tokens per estimate, at least")
    p.add_argument("--baseline_eval_interval", type=int, default=50,
                   help="baseline steps between evaluations once within 0.1 of the target (5x that before)")
    p.add_argument("--runs", nargs="+", default=["baseline", "tinyllm"], choices=["baseline", "tinyllm"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override preset settings for tinyllm (e.g. --set max_steps=900 optimizer=adamw)")
    p.add_argument("--baby", nargs="*", default=[], metavar="KEY=VALUE", help="override baseline settings")
    p.add_argument("--baseline_device", default="cpu",
                   help="where the baseline trains: cpu (the CPU comparison), or cuda / auto beside a GPU preset")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one run, in a process of its own
    return p.parse_args(argv)


def eval_iters_for(tokens: int, batch_size: int, block_size: int) -> int:
    return math.ceil(tokens / (batch_size * block_size))


def run_baseline(a: argparse.Namespace, seed: int, data_path: str) -> dict[str, Any]:
    from tinyllm.data import prepare

    hp = BABY | common.parse_sets(a.baby, known=list(BABY), flag="--baby")
    cfg = common.tinyllm_config({"data_path": data_path, "block_size": hp["block_size"], "out_dir": "unused"})
    tokenizer, train_ids, val_ids, _ = prepare(cfg, None)
    torch.manual_seed(seed)
    bc = BaselineConfig(tokenizer.vocab_size, hp["n_layer"], hp["n_head"], hp["n_embd"], hp["block_size"],
                        tie_weights=True, dropout=hp["dropout"])
    device = resolve_device(a.baseline_device)
    model = BaselineGPT(bc).to(device)
    bt = BaselineTrainer(model, train_ids.long().to(device), hp["block_size"], hp["batch_size"], lr=hp["lr"],
                         min_lr=hp["min_lr"], warmup=hp["warmup"], decay_steps=hp["decay_steps"], seed=seed)
    iters = eval_iters_for(a.eval_tokens, hp["batch_size"], hp["block_size"])
    val = val_ids.long().to(device)
    curve, train_s, reached = [], 0.0, None
    loss = math.inf
    while train_s < a.time_cap:
        # Far from the target, evaluate 5x less often: evaluations are off the clock but not free.
        every = a.baseline_eval_interval * (1 if loss < a.target + 0.1 else 5)
        t0 = time.perf_counter()
        for _ in range(every):
            bt.step()
        common.sync(device)
        train_s += time.perf_counter() - t0
        loss = bt.evaluate(val, iters, hp["batch_size"], seed=10_000)
        curve.append({"step": bt.it, "train_s": round(train_s, 2), "val_loss": round(loss, 4)})
        print(f"  baseline step {bt.it}: val {loss:.4f} at {train_s:.1f} s", flush=True)
        if loss <= a.target:
            reached = curve[-1]
            break
    return {"settings": hp | {"device": str(device)}, "params": sum(p.numel() for p in model.parameters()),
            "eval_iters": iters, "curve": curve, "reached": reached, "final": curve[-1] if curve else None}


def run_tinyllm(a: argparse.Namespace, seed: int, data_path: str) -> dict[str, Any]:
    from tinyllm.runlog import STOP_FILE
    from tinyllm.train import Trainer

    curve: list[dict[str, Any]] = []
    target, cap = a.target, a.time_cap

    class TimedTrainer(Trainer):
        """The real loop, whose clock (progress.time_s) already leaves out evaluations and the saves they
        trigger; reaching the target (or the cap) asks the loop to stop through its STOP file, as the GUI does."""

        last_val = math.inf

        def write(self, row: dict[str, Any]) -> None:
            if "val_loss" in row:
                self.last_val = row["val_loss"]
            super().write(row)

        def eval_and_keep_best(self) -> None:
            train_s = self.progress.time_s
            super().eval_and_keep_best()
            curve.append({"step": self.progress.step, "train_s": round(train_s, 2),
                          "val_loss": round(self.last_val, 4)})
            print(f"  tinyllm step {self.progress.step}: val {self.last_val:.4f} at {train_s:.1f} s", flush=True)
            if (self.last_val <= target or train_s >= cap) and self.progress.step < self.cfg.max_steps:
                (self.out / STOP_FILE).touch()

    with tempfile.TemporaryDirectory() as tmp:
        values = {"data_path": data_path, "seed": seed, "out_dir": tmp, "max_time": a.time_cap * 3 + 60}
        values |= common.parse_sets(a.set)
        cfg = common.tinyllm_config(values, a.preset)
        if "eval_iters" not in values:  # the preset's estimate, or a larger one if it is smaller than asked
            iters = max(cfg.eval_iters, eval_iters_for(a.eval_tokens, cfg.batch_size, cfg.block_size))
            cfg = common.tinyllm_config(values | {"eval_iters": iters}, a.preset)
        trainer = TimedTrainer(cfg, None, _single())
        try:
            trainer.run()
        finally:
            trainer.close()
    reached = next((c for c in curve if c["val_loss"] <= target), None)
    settings = {k: getattr(cfg, k) for k in cfg.to_dict() if k not in ("out_dir", "prompt")}
    return {"settings": settings, "params": trainer.model.num_params(), "eval_iters": cfg.eval_iters,
            "curve": curve, "reached": reached, "final": curve[-1] if curve else None}


def _single():
    from tinyllm import distributed

    return distributed.setup(False, "auto")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    common.set_threads(a.threads)
    if a.worker:
        r = (run_baseline if a.worker == "baseline" else run_tinyllm)(a, a.seeds[0], a.data_path)
        common.report_to_parent(r)
        return r
    if not Path(a.data_path).is_file():
        raise SystemExit(f"error: --data_path {a.data_path} not found (tinyshakespeare lives in ../shared/data)")
    # the device tinyllm's runs use (the preset's, "auto" = a GPU where there is one); the baseline's is
    # --baseline_device
    tinyllm_cfg = common.tinyllm_config({"data_path": a.data_path, "out_dir": "unused"} | common.parse_sets(a.set),
                                        a.preset)
    m = common.machine(resolve_device(tinyllm_cfg.device))
    print(f"machine: {common.describe(m)}", flush=True)
    runs: list[dict[str, Any]] = []
    for seed in a.seeds:
        for name in a.runs:
            load = common.load_average()
            print(f"{name}, seed {seed} (load average {load[0] if load else '?'}):", flush=True)
            r = common.run_worker(__file__, [*argv, "--worker", name, "--seeds", seed, "--json", ""])
            runs.append({"run": name, "seed": seed, "load_avg_before": load} | r)

    rows = []
    for r in runs:
        hit = r["reached"]
        rows.append([r["run"], r["seed"], f"{r['params'] / 1e6:.2f} M",
                     f"{hit['train_s']:.1f} s (step {hit['step']})" if hit else f"not within {a.time_cap:.0f} s",
                     f"{r['final']['val_loss']:.4f}" if r["final"] else "-", r["eval_iters"]])
    print(f"time to val loss <= {a.target} on {Path(a.data_path).name} (training time, evaluations excluded) on "
          f"{m['cpu']}, {m['cpu_capability']}, {'native bf16' if m['native_bf16'] else 'no native bf16'}")
    for r in runs[:len(a.runs)]:
        bs, bl = (r["settings"]["batch_size"], r["settings"]["block_size"])
        print(f"{r['run']}: every validation estimate averages {r['eval_iters']} batches = "
              f"{r['eval_iters'] * bs * bl:,} held-out tokens (the same batches at every estimate; at least "
              f"--eval_tokens {a.eval_tokens:,}), so one lucky batch cannot carry the figure")
    print(common.table(["run", "seed", "params", "time to target", "last val", "eval batches"], rows))
    ratios = {}
    for seed in a.seeds:
        by = {r["run"]: r for r in runs if r["seed"] == seed}
        if all(n in by and by[n]["reached"] for n in ("baseline", "tinyllm")):
            ratios[seed] = by["baseline"]["reached"]["train_s"] / by["tinyllm"]["reached"]["train_s"]
            print(f"seed {seed}: tinyllm reaches {a.target} {ratios[seed]:.2f}x faster than the baseline "
                  f"({1 / ratios[seed]:.2f} of its time)")
    out = {"benchmark": "time_to_loss", "machine": m, "load_avg_end": common.load_average(), "target": a.target,
           "time_cap": a.time_cap, "data": str(a.data_path), "preset": a.preset, "runs": runs,
           "speedup_by_seed": ratios}
    common.write_json(out, a.json)
    return out


if __name__ == "__main__":
    common.entry(main)
