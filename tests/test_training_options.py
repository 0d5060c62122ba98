"""Training options: the maths of each, and that they compose with each other and with resume."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, run_cli, tiny_trainer

from tinyllm import precision as P
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.data import curriculum_block_size, curriculum_sizes
from tinyllm.ema import EMA
from tinyllm.losses import training_loss
from tinyllm.metrics import read_metrics
from tinyllm.model import GPT, ModelArgs
from tinyllm.optim import get_lr, make_optimizer
from tinyllm.optimizers import Lion, newton_schulz
from tinyllm.train import forward_backward


def sched(**kw):
    base = {"lr": 1.0, "lr_min": 0.1, "lr_warmup_steps": 10, "lr_decay_steps": 0, "max_steps": 100,
            "lr_schedule": "cosine", "lr_stable_steps": 0}
    return SimpleNamespace(**(base | kw))


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "constant"])
def test_schedule_exact_points(kind):
    cfg = sched(lr_schedule=kind, lr_stable_steps=50)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == 1.0  # the last warmup step is at the full lr
    end = 1.0 if kind == "constant" else 0.1
    assert get_lr(99, cfg) == pytest.approx(end)  # the last step is exactly at lr_min
    assert get_lr(10_000, cfg) == pytest.approx(end)
    if kind == "wsd":
        assert get_lr(59, cfg) == 1.0  # the last stable step
        assert get_lr(60, cfg) == 1.0  # decay starts from the full lr ...
        assert get_lr(61, cfg) < 1.0  # ... and goes down from there
        assert get_lr(79, cfg) == pytest.approx(0.1 + 0.9 * (1 - 19 / 39))
    if kind == "cosine":
        mid = 10 + (99 - 10) / 2
        assert get_lr(int(mid), cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    if kind == "linear":
        assert get_lr(54, cfg) == pytest.approx(0.1 + 0.9 * (1 - 44 / 89))


def test_wsd_default_stable_phase_is_80_percent():
    cfg = sched(lr_schedule="wsd")
    assert get_lr(79, cfg) == 1.0 and get_lr(81, cfg) < 1.0


def test_decay_steps_before_max_steps():
    cfg = sched(lr_decay_steps=50)
    assert get_lr(49, cfg) == pytest.approx(0.1) and get_lr(80, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "constant"])
def test_time_budgeted_schedule_follows_the_clock(kind):
    cfg = sched(lr_schedule=kind, max_steps=0, max_time=100.0)
    assert get_lr(0, cfg, elapsed=50.0) == pytest.approx(0.1)  # the warmup still counts steps
    at = {t: get_lr(1000, cfg, elapsed=t) for t in (0.0, 50.0, 79.0, 90.0, 100.0, 250.0)}
    if kind == "constant":
        assert set(at.values()) == {1.0}
        return
    assert at[0.0] == pytest.approx(1.0) and at[100.0] == pytest.approx(0.1) and at[250.0] == pytest.approx(0.1)
    expected_90 = {"cosine": 0.1 + 0.45 * (1 + math.cos(0.9 * math.pi)), "linear": 0.19, "wsd": 0.55}[kind]
    assert at[90.0] == pytest.approx(expected_90)
    assert at[79.0] == (1.0 if kind == "wsd" else pytest.approx(0.1 + 0.9 * (0.21 if kind == "linear" else
                                                                             0.5 * (1 + math.cos(0.79 * math.pi)))))


def test_time_budgeted_run_ends_decayed_evaluated_and_complete(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "0", "--max_time", "1.5", "--lr_warmup_steps", "2",
                 "--lr_schedule", "wsd", "--lr", "1e-2", "--lr_min", "1e-4", "--eval_interval", "100000",
                 "--log_interval", "1") == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1] == rows[-1] | {"event": "end", "reason": "max_time"}
    assert "val_loss" in rows[-2]  # the end of the budget is the last step: it is evaluated
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] < 2e-3  # held, then decayed by the end
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["time_s"] >= 1.5
    assert "--resume" not in capsys.readouterr().err.split("done (max_time)")[-1]  # nothing left to continue
    assert run_cli(["--out_dir", out, "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == ckpt["step"]  # a finished budget trains no further


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(ModelArgs(**({"vocab_size": 13, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8} | kw)))


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


def test_z_loss_lowers_logsumexp():
    torch.manual_seed(0)
    x = torch.randint(0, 13, (8, 8))
    y = torch.randint(0, 13, (8, 8))
    results = {}
    for coef in (0.0, 0.1):
        model = tiny_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(30):
            ce, z = training_loss(model(x)[0], y, z_coef=coef)
            (ce if z is None else ce + z).backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            results[coef] = torch.logsumexp(model(x)[0], -1).pow(2).mean().item()
    assert results[0.1] < 0.5 * results[0.0]


def test_z_loss_value():
    logits = torch.randn(2, 3, 5)
    _, z = training_loss(logits, torch.zeros(2, 3, dtype=torch.long), z_coef=0.5)
    assert z.item() == pytest.approx(0.5 * torch.logsumexp(logits, -1).pow(2).mean().item(), rel=1e-6)


def test_ema_matches_hand_computation():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for e, got in zip(expected, ema.model.parameters(), strict=True):
        assert torch.allclose(e, got, atol=1e-7)


def test_curriculum_schedule():
    assert curriculum_sizes(32, 256) == [32, 64, 128, 256]
    assert curriculum_sizes(256, 256) == [256]
    sizes = [curriculum_block_size(s, 32, 256, 300) for s in range(0, 400)]
    assert sizes[0] == 32 and sizes[99] == 32 and sizes[100] == 64 and sizes[200] == 128
    assert sizes[299] == 128 and sizes[300] == 256 and sizes[-1] == 256
    assert sizes == sorted(sizes)


def test_lion_step_is_signed_interpolation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.state[p]["exp_avg"] = torch.tensor([1.0, 1.0, -1.0])
    p.grad = torch.tensor([-20.0, 0.5, 0.5])
    opt.step()
    # update = sign(0.9*m + 0.1*g) = sign([-1.1, 0.95, -0.85]); p = p*(1 - lr*wd) - lr*update
    expected = torch.tensor([1.0, -2.0, 3.0]) * 0.95 - 0.1 * torch.tensor([-1.0, 1.0, -1.0])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], torch.tensor([0.99 - 0.2, 0.99 + 0.005, -0.99 + 0.005]))


def test_newton_schulz_orthogonalises_batches():
    g = torch.randn(3, 16, 48)
    o = newton_schulz(g, steps=5)
    sv = torch.linalg.svdvals(o)
    assert o.shape == g.shape and sv.min() > 0.5 and sv.max() < 1.3
    tall = newton_schulz(torch.randn(48, 16))
    assert torch.linalg.svdvals(tall).min() > 0.5


def test_muon_beats_adamw_on_a_fixed_problem():
    """Memorising one fixed batch with a tiny GPT, equal steps, each optimizer at its best lr of a small grid:
    Muon reaches a clearly lower loss than AdamW."""
    torch.manual_seed(0)
    x = torch.randint(0, 32, (16, 32))
    y = torch.roll(x, -1, 1)

    def final_loss(**kw):
        model = tiny_model(seed=1, vocab_size=32, n_embd=64, block_size=32)
        opt = make_optimizer(model, Config(weight_decay=0.0, **kw), torch.device("cpu"))
        for _ in range(30):
            model(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
        return model(x, y)[1].item()

    adamw = min(final_loss(lr=lr) for lr in (1e-3, 3e-3, 1e-2))
    muon = min(final_loss(optimizer="muon", lr=3e-3, muon_lr=lr) for lr in (0.01, 0.02, 0.05))
    assert muon < 0.7 * adamw


def test_muon_groups_cover_every_parameter_once():
    model = tiny_model()
    opt = make_optimizer(model, Config(optimizer="muon"), torch.device("cpu"))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon) == (name.startswith("blocks.") and p.dim() == 2), name


def test_amp_on_cpu_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    warnings = []
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    prec = P.choose_precision(cpu, amp=True, warn=warnings.append)
    assert prec.dtype == torch.float32 and warnings and "no native bf16" in warnings[0]
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.choose_precision(cpu, amp=True).dtype == torch.bfloat16
    assert P.choose_precision(cpu, amp=False).dtype == torch.float32


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


def test_adamw8bit_trains_where_bitsandbytes_is_installed(corpus, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the bnb extra) is not installed")
    out = tmp_path / "run"
    assert train(corpus, out, "--optimizer", "adamw8bit", "--max_steps", "20", "--eval_interval", "0") == 0
    rows = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[-1] < rows[0]


def test_amp_run_on_cpu(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--amp", "--max_steps", "20", "--eval_interval", "20") == 0
    err = capsys.readouterr().err
    expected = "bf16 autocast" if P.cpu_has_native_bf16() else "no native bf16"
    assert expected in err
    rows = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[-1] < rows[0]
    assert load_checkpoint(out / "ckpt.pt")["model"]["tok_emb.weight"].dtype == torch.float32
