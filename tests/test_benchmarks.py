"""Smoke runs of every benchmark at tiny sizes (so they never rot), and the arithmetic they report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tinyllm import config as C
from tinyllm.model import GPT, ModelArgs

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import baseline  # noqa: E402
import bench_default_run  # noqa: E402
import bench_generate  # noqa: E402
import bench_muon  # noqa: E402
import bench_optimizers  # noqa: E402
import bench_throughput  # noqa: E402
import bench_time_to_loss  # noqa: E402
import common  # noqa: E402
import profile_step  # noqa: E402


@pytest.fixture(autouse=True)
def keep_threads():
    """One thread here: on a shared 2-core machine, two busy-waiting threads per process crawl. The benchmarks
    are also given --threads 1; torch gets its setting back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_flops_per_token_is_the_palm_formula():
    cfg = baseline.BaselineConfig(vocab_size=10, n_layer=2, n_head=2, n_embd=64, block_size=32)
    for tie in (False, True):
        cfg.tie_weights = tie
        model = baseline.GPT(cfg)
        per_block = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64  # qkv, attention out, fc, mlp out: 12 C^2
        n_matmul = 2 * per_block + 64 * 10  # the head once, tied or not; embedding lookups are not matmuls
        assert common.matmul_params(model) == n_matmul
        assert common.flops_per_token(model, 2, 64, 32) == 6 * n_matmul + 12 * 2 * 64 * 32
    assert common.mfu(1e6, 1e3, 4e9) == pytest.approx(0.25)


def test_baseline_is_the_same_model_as_tinyllms_default():
    cfg = C.from_dict({"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32})
    ours = GPT(ModelArgs.from_config(cfg, 50))
    theirs = baseline.GPT(baseline.BaselineConfig(50, 2, 2, 64, 32))
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in theirs.parameters())
    assert common.flops_per_token(ours, 2, 64, 32) == common.flops_per_token(theirs, 2, 64, 32)


def test_baseline_learns():
    torch.manual_seed(0)
    data = torch.arange(400) % 7  # a repeating pattern: next token = this token + 1 mod 7
    model = baseline.GPT(baseline.BaselineConfig(7, 1, 2, 32, 16))
    bt = baseline.BaselineTrainer(model, data, 16, 8, lr=1e-2, min_lr=1e-3, warmup=5, decay_steps=60)
    before = bt.evaluate(data, 2, 8)
    for _ in range(60):
        bt.step()
    assert bt.evaluate(data, 2, 8) < 0.5 * before


def test_baseline_dropout_acts_in_training_only():
    torch.manual_seed(0)
    idx = torch.randint(0, 7, (2, 16))
    for p, differs in ((0.0, False), (0.3, True)):
        model = baseline.GPT(baseline.BaselineConfig(7, 1, 2, 32, 16, dropout=p))
        model.train()
        a, b = model(idx, idx), model(idx, idx)
        assert (not torch.equal(a, b)) == differs
        model.eval()
        assert torch.equal(model(idx, idx), model(idx, idx))


def test_throughput_rows_by_device():
    assert bench_throughput.row_names(False, False) == ["baseline_fp32", "tinyllm_fp32", "tinyllm_amp"]
    assert "tinyllm_amp_compile_graphs" not in bench_throughput.row_names(True, False)  # no CUDA graphs on a CPU
    assert set(bench_throughput.row_names(True, True)) == set(bench_throughput.ROWS)
    assert "tinyllm_fp32_tf32" in bench_throughput.row_names(False, True)


def test_peak_matmul_is_measured():
    flops = common.measure_peak_flops(torch.float32, torch.device("cpu"), n=128, repeats=2)
    assert 1e6 < flops < 1e15


def test_throughput_smoke(tmp_path: Path):
    out = tmp_path / "throughput.json"
    res = bench_throughput.main(["--tiny", "--threads", "1", "--no-memory", "--json", str(out)])
    rows = res["rows"]
    assert set(rows) == {"baseline_fp32", "tinyllm_fp32", "tinyllm_amp"}
    assert rows["baseline_fp32"]["vs_baseline"] == 1.0
    for r in rows.values():
        assert r["tokens_per_sec"] > 0 and 0 < r["mfu"] < 1
    assert rows["tinyllm_fp32"]["dtype"] == "fp32"
    assert rows["tinyllm_amp"]["dtype"] in ("bf16", "fp32")  # fp32 where the CPU has no native bf16
    assert res["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(out.read_text())["rows"]["tinyllm_fp32"]["ms_per_step"] > 0


def test_throughput_memory_probe_runs_one_row_in_its_own_process():
    a = bench_throughput.parse_args(["--tiny", "--threads", "1"])
    mem = bench_throughput.probe_memory("tinyllm_amp", bench_throughput.pass_through(a))
    assert 50 < mem["peak_rss_mb"] < 10_000  # a process holding torch and a tiny model


def test_time_to_loss_smoke(tmp_path: Path, corpus: Path):
    out = tmp_path / "ttl.json"
    tiny = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8"]
    res = bench_time_to_loss.main([
        "--data_path", str(corpus), "--target", "50", "--time_cap", "30", "--eval_tokens", "512",
        "--baseline_eval_interval", "5", "--threads", "1", "--json", str(out),
        "--set", *tiny, "max_steps=40", "eval_interval=5", "--baby", *tiny, "dropout=0.1"])
    runs = {r["run"]: r for r in res["runs"]}
    assert runs["baseline"]["settings"] | {"dropout": 0.1, "device": "cpu"} == runs["baseline"]["settings"]
    # A target met at the first evaluation: both report it there, and tinyllm's loop stops at it. (The
    # baseline evaluates every 5 x 5 steps while it is far from the target.)
    assert runs["baseline"]["reached"]["step"] == 25
    assert runs["tinyllm"]["reached"]["step"] == 5 and runs["tinyllm"]["final"]["step"] == 5
    assert runs["tinyllm"]["eval_iters"] >= 2 and 1337 in res["speedup_by_seed"]
    assert json.loads(out.read_text())["target"] == 50


def test_time_to_loss_times_tinyllm_by_its_training_clock(corpus: Path, fake_clock):
    """Steps take 1 s and evaluations 100 s on a fake clock: the curve counts the steps only, once."""
    fake_clock.eval_s = 100.0
    a = bench_time_to_loss.parse_args(["--target", "0", "--time_cap", "1000", "--set", "n_layer=1", "n_head=2",
                                       "n_embd=32", "block_size=32", "batch_size=4", "max_steps=10",
                                       "eval_interval=5", "eval_iters=1", "sample_interval=0"])
    run = bench_time_to_loss.run_tinyllm(a, 1337, str(corpus))
    assert [(c["step"], c["train_s"]) for c in run["curve"]] == [(5, 5.0), (10, 10.0)]


def test_default_run_smoke(tmp_path: Path, corpus: Path):
    """The real command in its own process, with flags that make it tiny; wall clock, best val, the sample and
    the CPU capability come back."""
    out = tmp_path / "default.json"
    res = bench_default_run.main(["--json", str(out), "--", "--data_path", str(corpus), "--max_steps", "4",
                                  "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
                                  "--batch_size", "4", "--eval_interval", "2", "--eval_iters", "2",
                                  "--sample_interval", "4", "--sample_chars", "20"])
    (run,) = res["runs"]
    assert run["steps"] == 4 and [e["step"] for e in run["evals"]] == [2, 4]
    assert run["best_val"] == min(e["val_loss"] for e in run["evals"]) and run["wall_s"] > run["train_s"]
    assert run["sample"] and run["config"]["n_embd"] == 32
    saved = json.loads(out.read_text())
    assert saved["machine"]["cpu_capability"] and "native_bf16" in saved["machine"]


def test_time_to_loss_reports_a_target_not_reached(corpus: Path):
    tiny = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8"]
    res = bench_time_to_loss.main([
        "--data_path", str(corpus), "--target", "0.01", "--time_cap", "30", "--eval_tokens", "256",
        "--baseline_eval_interval", "5", "--threads", "1", "--runs", "tinyllm",
        "--set", *tiny, "max_steps=10", "eval_interval=5"])
    (run,) = res["runs"]
    assert run["reached"] is None and run["final"]["step"] == 10 and res["speedup_by_seed"] == {}


def test_optimizers_smoke(tmp_path: Path, corpus: Path):
    out = tmp_path / "opt.json"
    res = bench_optimizers.main(["--tiny", "--budget", "1", "--data_path", str(corpus), "--threads", "1",
                                 "--json", str(out)])
    assert [r["optimizer"] for r in res["runs"]] == ["adamw", "lion", "muon"]
    for r in res["runs"]:
        assert 0 < r["steps"] <= r["planned_steps"] and r["train_s"] < 5 and 0 < r["val_loss"] < 10
    assert res["precision"]["fp32"]["compute"] == "fp32" and res["precision"]["amp_vs_fp32"] > 0


def test_muon_smoke(tmp_path: Path):
    out = tmp_path / "muon.json"
    res = bench_muon.main(["--tiny", "--threads", "1", "--json", str(out)])
    (size,) = res["sizes"].values()
    assert size["matrices"] == 2 * 4 and size["params"] == 2 * (32 * 96 + 32 * 32 + 2 * 32 * 128)
    assert {"tinyllm Muon (fp32, batched)", "tinyllm Muon (bf16, batched)"} <= set(size["ms_per_step"])
    assert all(v > 0 for v in size["ms_per_step"].values())
    assert json.loads(out.read_text())["tinyllm_choice"] in ("fp32", "bf16")


def test_muon_ns_dtype_override_is_used():
    """The benchmark's fp32 and bf16 rows differ only by Muon's ns_dtype: it must reach the iterations."""
    from tinyllm.optimizers import Muon

    def step(dtype):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(24, 16))
        w.grad = torch.randn(24, 16)
        Muon([{"params": [w], "use_muon": True, "lr": 0.1}], ns_dtype=dtype).step()
        return w.detach().clone()

    a, b = step(torch.float32), step(torch.bfloat16)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05)


def gpu_script_calls(out: Path, *parts: str) -> list[tuple[str, list[str]]]:
    """benchmarks/gpu.sh's commands, as its DRY_RUN=1 prints them: (script, arguments)."""
    import os
    import shlex
    import subprocess

    run = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(out), *parts], capture_output=True, text=True,
                         env=os.environ | {"DRY_RUN": "1"}, check=True)
    lines = [shlex.split(line[3:]) for line in run.stdout.splitlines() if line.startswith("== ")]
    return [(Path(words[0]).stem, words[1:]) for words in lines if words[0].startswith("benchmarks/")]


def test_gpu_script_refuses_an_unknown_part_and_prints_commands_that_paste(tmp_path: Path):
    import os
    import subprocess

    env = os.environ | {"DRY_RUN": "1"}
    bad = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(tmp_path), "ttl", "throughputt"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "unknown part 'throughputt'" in bad.stderr and bad.stdout == ""
    tests = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(tmp_path), "tests"], capture_output=True, text=True,
                           env=env, check=True).stdout
    assert "-k cuda\\ or\\ nccl" in tests or "-k 'cuda or nccl'" in tests  # quoted: one argument


def test_gpu_script_passes_only_flags_and_settings_the_benchmarks_know(tmp_path: Path):
    # benchmarks/gpu.sh needs a GPU, so it cannot be smoke-run here; its commands are checked instead
    calls = gpu_script_calls(tmp_path)
    assert [name for name, _ in calls] == [*["bench_time_to_loss"] * 3, "bench_throughput", "bench_time_to_loss",
                                           *["profile_step"] * 3, "bench_throughput", "bench_generate"]
    modules = {"bench_throughput": bench_throughput, "bench_time_to_loss": bench_time_to_loss,
               "bench_generate": bench_generate, "profile_step": profile_step}
    jsons = []
    for name, args in calls:
        a = modules[name].parse_args(args)  # exits on an unknown flag
        jsons.append(a.json)
        preset = getattr(a, "preset", None) or getattr(a, "config", None)
        if preset:  # the script runs from the repository root; every --set must be a valid setting there
            common.tinyllm_config({"out_dir": "unused"} | common.parse_sets(getattr(a, "set", [])),
                                  BENCH.parent / preset)
        assert set(common.parse_sets(getattr(a, "baby", []))) <= set(bench_time_to_loss.BABY)
    assert len(set(jsons)) == len(jsons) and all(Path(j).parent == tmp_path for j in jsons)
    # a part alone runs that part alone
    assert [(n, a[a.index("--runs") + 1]) for n, a in gpu_script_calls(tmp_path, "baseline")] == [
        ("bench_time_to_loss", "baseline")]


def test_data_smoke(tmp_path: Path, corpus: Path):
    pytest.importorskip("tokenizers", reason="the BPE half needs the bpe extra")
    import bench_data

    r = bench_data.main(["--text", str(corpus), "--bpe_vocab_size", "300", "--gib", "0.001", "--steps", "2",
                         "--json", str(tmp_path / "data.json")])
    assert [s["tokenizer"] for s in r["speed"]] == ["char", "bpe"]
    assert all(s["encode_mib_s"] > 0 and s["bytes_per_token"] >= 1 for s in r["speed"])
    assert [x["phase"] for x in r["rss"]] == ["tokenise + train", "reuse tokens.bin + train"] and r["rss_ok"]
    assert json.loads((tmp_path / "data.json").read_text())["rss_ok"] is True


def test_profile_step_splits_the_step_into_phases(corpus: Path):
    """The profiler sees tinyllm's real step: the phases it labels were entered, their times add up within the
    step, and the operator table is not empty."""
    res = profile_step.main(["--data_path", str(corpus), "--steps", "2", "--warmup", "1", "--threads", "1",
                             "--set", "n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=4"])
    phases = res["phases"]
    assert 0 < phases["model forward"] < phases["forward + loss + backward"]
    assert phases["optimizer step"] > 0
    assert phases["forward + loss + backward"] + phases["optimizer step"] <= res["ms_per_step"] * 1.05
    assert res["top"] and all(r["self_ms"] >= 0 for r in res["top"])


def test_profile_gpu_table_measures_busy_share_and_launches():
    """The GPU table's arithmetic, on made-up events: 2 steps, kernels of 3 ms and 1 ms (per step 1.5 + 0.5)
    in a 4 ms step: 2 ms busy = 50%, 3 kernels a step. The CPU operator that launched a kernel carries its GPU
    time too: counted, the GPU would seem busier than it was."""
    from functools import partial
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    kernel, cpu_op = partial(SimpleNamespace, device_type=DeviceType.CUDA), partial(SimpleNamespace,
                                                                                   device_type=DeviceType.CPU)
    events = [kernel(key="gemm", count=4, self_device_time_total=3000.0),
              kernel(key="elementwise", count=2, self_device_time_total=1000.0),
              cpu_op(key="aten::mm", count=4, self_device_time_total=3000.0),
              cpu_op(key="aten::add", count=8, self_device_time_total=0.0)]
    res = profile_step.gpu_tables(events, steps=2, top=5, wall_ms=4.0)
    assert res["gpu_busy_ms"] == 2.0 and res["gpu_kernels_per_step"] == 3
    assert [(r["op"], r["calls"], r["gpu_ms"]) for r in res["gpu_top"]] == [("gemm", 2, 1.5), ("elementwise", 1, 0.5)]


@pytest.mark.parametrize("script, args, needle", [
    ("bench_generate.py", ["--device", "foo"], "error: --device 'foo' is not a device"),
    ("bench_generate.py", ["--rounds", "0"], "--rounds: must be at least 1, got 0"),
    ("profile_step.py", ["--steps", "0"], "--steps: must be at least 1, got 0"),
    ("bench_time_to_loss.py", ["--runs", "baseline", "--baby", "bogus=1"], "error: --baby bogus=1: expected KEY=VALUE; "
                                                                         "one of n_layer"),
])
def test_benchmarks_refuse_bad_settings_in_one_line(script, args, needle):
    import subprocess

    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, cwd=BENCH.parent,
                       timeout=120)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
