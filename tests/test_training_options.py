"""Training options: the maths of each, and that they compose with each other and with resume."""

import math

import pytest
import torch
from conftest import TINY, run_cli, tiny_model, tiny_trainer

from tinyllm import precision as P
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.metrics import read_metrics
from tinyllm.train import forward_backward


def test_time_budgeted_run_ends_decayed_evaluated_and_complete(corpus, tmp_path, capsys, fake_clock):
    out = tmp_path / "run"
    fake_clock.step_s = 0.1  # 30 steps in the budget of 3 s
    assert train(corpus, out, "--max_steps", "0", "--max_time", "3", "--lr_warmup_steps", "2",
                 "--lr_schedule", "wsd", "--lr", "1e-2", "--lr_min", "1e-4", "--eval_interval", "100000",
                 "--log_interval", "1") == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1] == rows[-1] | {"event": "end", "reason": "max_time", "step": 30}
    assert "val_loss" in rows[-2]  # the end of the budget is the last step: it is evaluated
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 2e-3  # held, then decayed by the end
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["time_s"] == pytest.approx(3.0)
    assert "--resume" not in capsys.readouterr().err.split("done (max_time)")[-1]  # nothing left to continue
    assert run_cli(["--out_dir", out, "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == ckpt["step"]  # a finished budget trains no further


def test_time_budget_counts_training_not_evaluations(corpus, tmp_path, capsys, fake_clock):
    """Each step takes 1 s, each evaluation 50 s: a budget of 10 s trains 10 steps and evaluates every 2 of
    them; if evaluations counted, it would end after the first one. The log's tokens/s is the steps' own."""
    fake_clock.eval_s = 50.0
    trainer = tiny_trainer(corpus, tmp_path / "run", max_steps=0, max_time=10.0, eval_interval=2,
                           eval_iters=1, sample_interval=0, log_interval=1)
    try:
        assert trainer.run() == 0
    finally:
        trainer.close()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6, 8, 10]
    assert rows[-1]["step"] == 10 and rows[-1]["time_s"] == pytest.approx(10.0)
    assert [r["tokens_per_sec"] for r in rows if "loss" in r] == [4 * 16 / 1.0] * 10  # batch 4 x 16 tokens a second
    assert "10.0 s of training (260 s wall clock)" in capsys.readouterr().err


def test_first_compiled_step_is_off_the_clock(corpus, tmp_path, capsys, fake_clock, monkeypatch):
    """Under --compile the first step traces and compiles (here it takes 100 s, the others 1 s): a budget of
    10 s trains that step and 10 more, and the compilation shows in the wall clock alone. Counted, it would end
    the budget after the first step. Nor is it in the log's tokens/s (the first row has no timed step)."""
    from tinyllm import train as T

    timed_step = T.Trainer.train_step

    def compiling_first(self, t):
        if self.progress.step == 0:
            fake_clock.now += 99.0
        return timed_step(self, t)

    monkeypatch.setattr(T.Trainer, "train_step", compiling_first)
    trainer = tiny_trainer(corpus, tmp_path / "run", max_steps=0, max_time=10.0, eval_interval=0,
                           sample_interval=0, log_interval=1, compile=True, compile_backend="eager")
    try:
        assert trainer.run() == 0
    finally:
        trainer.close()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["step"] == 11 and rows[-1]["time_s"] == pytest.approx(10.0)
    assert [r["tokens_per_sec"] for r in rows if "loss" in r] == [0.0] + [4 * 16 / 1.0] * 10
    err = capsys.readouterr().err
    assert "the first step took 100.0 s" in err and "10.0 s of training (110 s wall clock)" in err


def test_budgeted_ranks_share_one_clock(corpus, tmp_path, fake_clock, monkeypatch):
    """Under DDP each rank's clock differs (rank 0 samples off its clock while the others wait); a budget's
    schedule follows the clock, so the ranks agree on one (their mean) at every step, or their weights drift."""
    trainer = tiny_trainer(corpus, tmp_path / "run", max_steps=0, max_time=10.0)
    try:
        monkeypatch.setattr(trainer.dist, "mean", lambda value: 42.0)  # what the all-reduce agreed on
        trainer.t_session, trainer.time_before, trainer.paused_s = 0.0, 0.0, 0.0
        trainer.count_step(trainer.cfg.block_size)
        assert trainer.progress.time_s == 42.0 and trainer.is_last_step()
    finally:
        trainer.close()


def test_accumulated_gradient_equals_big_batch():
    torch.manual_seed(1)
    x = torch.randint(0, 13, (16, 8))
    y = torch.randint(0, 13, (16, 8))
    cfg = Config(label_smoothing=0.1, z_loss=1e-3)
    fp32 = P.Precision(torch.device("cpu"), torch.float32)
    big, acc = tiny_model(), tiny_model()
    forward_backward(big, [(x, y)], cfg, fp32)
    forward_backward(acc, [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)], cfg, fp32)
    for (name, a), b in zip(big.named_parameters(), acc.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=0), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_scaler_path_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    prec = P.choose_precision(torch.device("cuda"), amp=True)
    assert prec.dtype == torch.float16 and prec.scaler is not None
    model = tiny_model().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 13, (4, 8), device="cuda")
    forward_backward(model, [(x, x)], Config(), prec)
    prec.scaler.unscale_(opt)
    prec.scaler.step(opt)
    prec.scaler.update()
    assert prec.scaler.get_scale() > 0


def test_a_step_the_loss_scaler_skips_leaves_weights_and_ema_alone(corpus, tmp_path, monkeypatch):
    # fp16 with loss scaling is a CUDA path; torch's CPU GradScaler follows the same rules, so it runs here
    from tinyllm import train as train_mod

    trainer = tiny_trainer(corpus, tmp_path / "run", ema=True)
    try:
        trainer.precision = P.Precision(torch.device("cpu"), torch.float16, scaler=torch.amp.GradScaler("cpu"))
        trainer.skips_on_device = False
        trainer.train_step(16)  # one good step first, so that the EMA differs from the weights
        real = train_mod.training_loss

        def inf_gradient(logits, targets, *a, **k):  # a finite loss whose gradient is not finite
            ce, z = real(logits, targets, *a, **k)
            return ce + torch.sqrt(logits.float().sum() * 0), z

        monkeypatch.setattr(train_mod, "training_loss", inf_gradient)
        weights = [v.clone() for v in trainer.model.parameters()]
        ema = [v.clone() for v in trainer.ema.model.parameters()]
        ce, _, _, finite = trainer.train_step(16)
        assert torch.isfinite(ce) and finite  # our own check lets it through: the scaler's business
        assert trainer.precision.scaler.get_scale() == 2.0**15  # it skipped the step and backed off
        assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters(), strict=True))
        assert all(torch.equal(a, b) for a, b in zip(ema, trainer.ema.model.parameters(), strict=True))
        monkeypatch.undo()
        trainer.train_step(16)  # a good step moves both
        assert not torch.equal(ema[0], next(trainer.ema.model.parameters()))
    finally:
        trainer.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_run_keeps_scaler_state_across_resume(corpus, tmp_path, monkeypatch, capsys):
    # a GPU without bf16 (pre-Ampere): fp16 autocast with loss scaling, the scaler saved and restored
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    out = tmp_path / "run"
    assert train(corpus, out, "--device", "cuda", "--amp", "--max_steps", "10", "--eval_interval", "5") == 0
    printed = capsys.readouterr()
    assert "fp16 autocast (fp32 master weights) with loss scaling" in printed.out + printed.err
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["scaler"]["scale"] > 0 and ckpt["model"]["head.weight"].dtype == torch.float32
    assert run_cli(["--out_dir", out, "--resume", "--max_steps", "15", "--no-progress"]) == 0
    resumed = load_checkpoint(out / "ckpt.pt")
    assert resumed["step"] == 15 and "scaler" in resumed
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inductor_on_cuda_matches_eager(corpus, tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile_backend", "inductor"])):
        assert train(corpus, tmp_path / name, "--device", "cuda", "--max_steps", "10", "--eval_interval", "0",
                     *extra) == 0
        runs[name] = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
        assert "--compile (inductor) failed" not in (tmp_path / name / "train.log").read_text()
    assert runs["compiled"] == pytest.approx(runs["eager"], abs=2e-3)


def train(corpus, out, *extra):
    return run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *extra])


COMBOS = {
    "muon": ["--optimizer", "muon"],
    "lion": ["--optimizer", "lion", "--lr", "1e-3", "--weight_decay", "1.0"],
    "everything": ["--ema", "--ema_decay", "0.9", "--z_loss", "1e-4", "--label_smoothing", "0.1",
                   "--grad_accum_steps", "2", "--curriculum", "--curriculum_start_block_size", "8",
                   "--curriculum_steps", "12", "--lr_schedule", "wsd", "--dropout", "0.1"],
}


@pytest.mark.parametrize("combo", COMBOS, ids=list(COMBOS))
def test_options_resume_bit_identical(corpus, tmp_path, combo):
    common = [*COMBOS[combo], "--lr_decay_steps", "20", "--eval_interval", "10"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(corpus, a, "--max_steps", "20", *common) == 0
    assert train(corpus, b, "--max_steps", "10", *common) == 0
    assert run_cli(["--out_dir", b, "--resume", "--max_steps", "20", "--no-progress"]) == 0
    ca, cb = load_checkpoint(a / "ckpt.pt"), load_checkpoint(b / "ckpt.pt")
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    if "ema" in ca:
        for key in ca["ema"]:
            assert torch.equal(ca["ema"][key], cb["ema"][key]), key
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r and r["step"] > 10] for d in (a, b)]
    assert losses[0] == losses[1]


def test_everything_learns_and_logs(corpus, tmp_path):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "30", "--eval_interval", "30", *COMBOS["everything"]) == 0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all("z_loss" in r and "grad_norm" in r for r in rows)
    assert [r["block_size"] for r in rows] == [8, 16, 32, 32, 32, 32]  # log every 5 steps, curriculum over 12
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert "ema" in ckpt and ckpt["tokens_seen"] == 2 * 8 * (6 * 8 + 6 * 16 + 18 * 32)


def test_generate_uses_ema_unless_told_not_to(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "10", "--eval_interval", "0", "--ema", "--ema_decay", "0.5") == 0
    capsys.readouterr()
    args = ["--out_dir", out, "--generate_only", "--temperature", "0", "--sample_chars", "30"]
    assert run_cli(args) == 0
    with_ema = capsys.readouterr()
    assert "EMA weights" in with_ema.err
    assert run_cli([*args, "--no_ema"]) == 0
    without = capsys.readouterr()
    assert "EMA weights" not in without.err


def test_compile_matches_eager(corpus, tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile_backend", "aot_eager"])):
        assert train(corpus, tmp_path / name, "--max_steps", "10", "--eval_interval", "0", *extra) == 0
        runs[name] = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
        ckpt = load_checkpoint(tmp_path / name / "ckpt.pt")
        raw = torch.load(tmp_path / name / "ckpt.pt", weights_only=True)["model"]
        assert not any("_orig_mod" in k for k in raw) and ckpt["step"] == 10
    assert runs["compiled"] == pytest.approx(runs["eager"], abs=1e-4)


def test_compile_failure_falls_back_to_eager(corpus, tmp_path, capsys):
    from torch._dynamo import register_backend

    @register_backend
    def tinyllm_broken_backend(gm, example_inputs):
        raise RuntimeError("this backend always fails")

    assert train(corpus, tmp_path / "run", "--max_steps", "5", "--eval_interval", "0", "--compile",
                 "--compile_backend", "tinyllm_broken_backend") == 0
    err = capsys.readouterr().err
    assert "--compile (tinyllm_broken_backend) failed" in err and "eager" in err
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 5


def test_unknown_compile_backend_is_an_error(corpus, tmp_path, capsys):
    assert train(corpus, tmp_path / "run", "--compile", "--compile_backend", "nope") == 2
    assert "--compile_backend 'nope'" in capsys.readouterr().err


def test_adamw8bit_without_bitsandbytes_names_the_extra(corpus, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert train(corpus, tmp_path / "run", "--optimizer", "adamw8bit") == 2
    assert 'pip install -e ".[bnb]"' in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_adamw8bit_trains_where_bitsandbytes_is_installed(corpus, tmp_path, device):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the bnb extra) is not installed")
    out = tmp_path / "run"
    assert train(corpus, out, "--optimizer", "adamw8bit", "--max_steps", "20", "--eval_interval", "0",
                 "--device", device) == 0
    rows = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[-1] < rows[0]


def test_bitsandbytes_is_imported_with_the_hub_offline(monkeypatch):
    """bitsandbytes asks the Hugging Face Hub for an optional kernel when imported on some CPUs: tinyllm imports
    it with the Hub offline (unless the user decided otherwise) and its loggers as they were."""
    import logging
    import os

    from tinyllm.optim import import_bitsandbytes

    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the bnb extra) is not installed")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert import_bitsandbytes().optim.AdamW8bit
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert logging.getLogger("kernels").level == logging.NOTSET
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import_bitsandbytes()
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_amp_run_on_cpu(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--amp", "--max_steps", "20", "--eval_interval", "20") == 0
    err = capsys.readouterr().err
    expected = "bf16 autocast" if P.cpu_has_native_bf16() else "no native bf16"
    assert expected in err
    rows = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[-1] < rows[0]
    assert load_checkpoint(out / "ckpt.pt")["model"]["tok_emb.weight"].dtype == torch.float32


def test_compile_mode_reaches_torch_compile_and_needs_inductor(monkeypatch):
    from tinyllm.errors import UserError
    from tinyllm.train import compile_model

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    compile_model(torch.nn.Linear(2, 2), "inductor", "max-autotune-no-cudagraphs")
    compile_model(torch.nn.Linear(2, 2), "inductor")
    assert calls == [{"backend": "inductor", "mode": "max-autotune-no-cudagraphs"}, {"backend": "inductor"}]
    with pytest.raises(UserError, match="--compile_mode reduce-overhead is a mode of the inductor backend"):
        compile_model(torch.nn.Linear(2, 2), "aot_eager", "reduce-overhead")


def test_cuda_graphs_refuse_grad_accumulation_and_ddp():
    """torch's CUDA graphs overwrite gradients accumulated across micro-batches (pytorch issue 169545): the
    combination is an error on a GPU, before anything trains. On a CPU those modes capture no graphs."""
    from tinyllm.errors import UserError
    from tinyllm.train import check_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    graphs = {"compile": True, "compile_mode": "reduce-overhead"}
    with pytest.raises(UserError, match="--grad_accum_steps 2.*--compile_mode default"):
        check_cuda_graphs(Config(**graphs, grad_accum_steps=2), cuda, ddp=False)
    with pytest.raises(UserError, match="DDP"):
        check_cuda_graphs(Config(**graphs | {"compile_mode": "max-autotune"}), cuda, ddp=True)
    check_cuda_graphs(Config(**graphs, grad_accum_steps=2), cpu, ddp=True)
    check_cuda_graphs(Config(**graphs | {"compile": False}, grad_accum_steps=2), cuda, ddp=True)
    check_cuda_graphs(Config(compile=True, compile_mode="max-autotune-no-cudagraphs", grad_accum_steps=2), cuda,
                      ddp=True)
    check_cuda_graphs(Config(**graphs), cuda, ddp=False)


def test_compile_mode_with_another_backend_is_an_error_that_writes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--compile", "--compile_backend", "aot_eager", "--compile_mode", "reduce-overhead") == 2
    assert "--compile_backend inductor" in capsys.readouterr().err
    assert not out.exists()  # the folder it made went with it: no config, log or checkpoint


def test_reduce_overhead_compiles_and_trains_on_cpu(corpus, tmp_path):
    """On a CPU, reduce-overhead is inductor's default code (no CUDA graphs there): it must still compile and
    train as eager does, so one preset serves both devices."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "--compile_mode", "reduce-overhead"])):
        assert train(corpus, tmp_path / name, "--max_steps", "4", "--eval_interval", "0", *extra) == 0
        runs[name] = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
    log = (tmp_path / "compiled" / "train.log").read_text()
    assert "compile: inductor (reduce-overhead)" in log and "--compile (inductor) failed" not in log
    assert runs["compiled"] == pytest.approx(runs["eager"], abs=2e-3)


def test_tf32_is_set_on_cuda_only_and_both_ways(monkeypatch):
    matmul = torch.backends.cuda.matmul
    monkeypatch.setattr(matmul, "fp32_precision", matmul.fp32_precision)  # restored afterwards
    on = P.choose_precision(torch.device("cuda"), amp=False, tf32=True)
    assert matmul.fp32_precision == "tf32" and "TF32" in on.describe()
    off = P.choose_precision(torch.device("cuda"), amp=False, tf32=False)
    assert matmul.fp32_precision == "ieee" and "TF32" not in off.describe()
    matmul.fp32_precision = "tf32"
    assert "TF32" not in P.choose_precision(torch.device("cpu"), amp=False, tf32=True).describe()
    assert matmul.fp32_precision == "tf32"  # a CPU run leaves the CUDA setting alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_and_tf32_on_cuda_match_eager(corpus, tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("graphs", ["--compile", "--compile_mode", "reduce-overhead"]),
                        ("tf32", ["--tf32"])):
        assert train(corpus, tmp_path / name, "--device", "cuda", "--max_steps", "10", "--eval_interval", "5",
                     *extra) == 0
        runs[name] = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
        assert "--compile (inductor) failed" not in (tmp_path / name / "train.log").read_text()
    assert runs["graphs"] == pytest.approx(runs["eager"], abs=2e-3)
    assert runs["tf32"] == pytest.approx(runs["eager"], abs=2e-2)
