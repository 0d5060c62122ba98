"""Every architecture option, alone and together: causality, learning, parameter count, checkpoints,
the sliding-window mask, layerdrop and activation checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIC, TINY, run_cli

from tinyllm import config as C
from tinyllm.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from tinyllm.cli import build_parser
from tinyllm.errors import UserError
from tinyllm.generate import load_model
from tinyllm.model import GPT, ModelArgs, RMSNorm, _ReLU2, _RMSNormFn, attention_mask, layerdrop_scales
from tinyllm.runconfig import resolve_config
from tinyllm.tokenizer import CharTokenizer

BASE = dict(vocab_size=23, n_layer=2, n_head=4, n_embd=32, block_size=16)
ALL_ROPE = dict(weight_tying=True, mlp="swiglu", pos_encoding="rope", rope_theta=500.0, norm="rmsnorm",
                qk_norm=True, parallel_block=True, sliding_window=5, n_kv_head=2, logit_softcap=5.0,
                layerdrop=0.3, grad_checkpointing=True, bias=False, dropout=0.1)
ALL_LEARNED = dict(weight_tying=True, mlp="relu2", mlp_hidden=48, pos_encoding="learned", norm="layernorm",
                   qk_norm=True, parallel_block=False, sliding_window=7, n_kv_head=1, logit_softcap=3.0,
                   layerdrop=0.2, grad_checkpointing=True)
COMBOS = {
    "baseline": {},
    "no_bias": dict(bias=False),
    "dropout": dict(dropout=0.1),
    "weight_tying": dict(weight_tying=True),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "mlp_hidden": dict(mlp_hidden=40),
    "rope": dict(pos_encoding="rope"),
    "no_positions": dict(pos_encoding="none"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "parallel_block": dict(parallel_block=True),
    "sliding_window": dict(sliding_window=5),
    "layerdrop": dict(layerdrop=0.5),
    "grad_checkpointing": dict(grad_checkpointing=True),
    "gqa": dict(n_kv_head=2),
    "logit_softcap": dict(logit_softcap=5.0),
    "all_rope": ALL_ROPE,
    "all_no_positions": {**ALL_ROPE, "pos_encoding": "none", "mlp": "gelu"},
    "all_learned": ALL_LEARNED,
}
combos = pytest.mark.parametrize("combo", list(COMBOS.values()), ids=list(COMBOS))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a busy 2-core machine, waking a second thread costs far more than it saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelArgs(**{**BASE, **overrides}))


def expected_params(a: ModelArgs) -> int:
    """The parameter count written out by hand, independently of the model code."""
    d, b = a.n_embd, int(a.bias)
    hd = d // a.n_head
    kv = (a.n_kv_head or a.n_head) * hd
    norm = d * (1 + b) if a.norm == "layernorm" else d
    hidden = a.mlp_hidden or (64 * math.ceil(8 * d / 3 / 64) if a.mlp == "swiglu" else 4 * d)
    fc_out = 2 * hidden if a.mlp == "swiglu" else hidden
    attn = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d + (2 * hd if a.qk_norm else 0)
    mlp = d * fc_out + b * fc_out + hidden * d + b * d
    block = attn + mlp + norm * (1 if a.parallel_block else 2)
    positions = a.block_size * d if a.pos_encoding == "learned" else 0
    head = 0 if a.weight_tying else a.vocab_size * d
    return a.vocab_size * d + positions + a.n_layer * block + norm + head


@combos
def test_causality(combo):
    model = make(**combo).eval()
    x = torch.randint(0, 23, (2, 16))
    for t in (0, 6, 14):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 23, (2, 15 - t))
        y[:, t + 1:] = torch.where(y[:, t + 1:] == x[:, t + 1:], (y[:, t + 1:] + 1) % 23, y[:, t + 1:])
        lx, ly = model(x)[0], model(y)[0]
        torch.testing.assert_close(lx[:, :t + 1], ly[:, :t + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(lx[:, t + 1:], ly[:, t + 1:])  # the later positions did see the change


@combos
def test_a_few_steps_lower_the_loss(combo):
    model = make(**combo).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 23, (4, 17), generator=g)
    losses = []
    for step in range(12):
        model.set_layerdrop_step(seed=0, step=step)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3, losses


@combos
def test_parameter_count_matches_formula(combo):
    model = make(**combo)
    assert model.num_params() == expected_params(model.args)
    assert len(model.state_dict()) > 0


@combos
def test_weight_tying_removes_exactly_vocab_times_embd(combo):
    untied, tied = make(**{**combo, "weight_tying": False}), make(**{**combo, "weight_tying": True})
    assert untied.num_params() - tied.num_params() == BASE["vocab_size"] * BASE["n_embd"]
    assert tied.head.weight is tied.tok_emb.weight


@combos
def test_state_dict_round_trips_through_a_checkpoint(combo, tmp_path):
    model = make(seed=3, **combo).eval()
    state = {"format_version": FORMAT_VERSION, "config": {}, "model_args": model.args.to_dict(),
             "model": model.state_dict(), "tokenizer": "{}", "step": 0}
    save_checkpoint(state, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(99)  # different init: everything must come from the file
    loaded = GPT(ModelArgs(**ckpt["model_args"])).eval()
    loaded.load_state_dict(ckpt["model"])
    assert loaded.args == model.args
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randint(0, 23, (2, 16))
    assert torch.equal(model(x)[0], loaded(x)[0])
    if model.args.weight_tying:
        assert loaded.head.weight is loaded.tok_emb.weight


def test_default_architecture_keeps_its_state_dict_keys():
    """The keys of checkpoints written before the options existed (they must keep loading)."""
    keys = set(make().state_dict())
    assert {"tok_emb.weight", "pos_emb.weight", "norm_f.weight", "norm_f.bias", "head.weight",
            "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias",
            "blocks.0.norm2.bias", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"} <= keys
    assert make().state_dict()["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert not any("cos" in k or "sin" in k for k in make(pos_encoding="rope").state_dict())


def test_old_checkpoint_without_new_keys_loads(tmp_path):
    old_args = {k: BASE[k] for k in BASE} | {"dropout": 0.0, "bias": True}  # the original seven fields
    model = make(seed=1)
    state = {"format_version": 1, "config": {}, "model_args": old_args, "model": model.state_dict(),
             "tokenizer": CharTokenizer(list("abcdefghijklmnopqrstuvw")).to_json(), "step": 0}
    save_checkpoint(state, tmp_path / "ckpt.pt")
    loaded, _, _ = load_model(str(tmp_path))
    assert loaded.args == ModelArgs(**BASE)
    x = torch.randint(0, 23, (1, 16))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


def test_old_run_generates_and_accepts_default_shape_flags(corpus, tmp_path, capsys):
    """A run folder whose checkpoint predates the options: its config and model_args lack their keys."""
    out = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *CLASSIC,
                    "--max_steps", "2", "--eval_interval", "0"]) == 0
    ckpt = load_checkpoint(out / "ckpt.pt")
    new_keys = [f for f in ModelArgs.__dataclass_fields__ if f not in
                ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")]
    for key in new_keys + ["kv_cache"]:
        ckpt["config"].pop(key, None)
        ckpt["model_args"].pop(key, None)
    save_checkpoint(ckpt, out / "ckpt.pt")
    capsys.readouterr()
    assert run_cli(["--out_dir", out, "--generate_only", "--sample_chars", "5", "--mlp", "gelu"]) == 0
    assert run_cli(["--out_dir", out, "--generate_only", "--mlp", "swiglu"]) == 2
    assert "--mlp swiglu conflicts with the checkpoint" in capsys.readouterr().err


# --- sliding window ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [1, 3, 5, 16])
def test_sliding_window_mask_sees_exactly_the_last_n(window):
    T = 12
    mask = attention_mask(0, T, window)
    if window >= T:
        assert mask is None  # plain causal: SDPA's is_causal path
        mask = torch.ones(T, T, dtype=torch.bool).tril()
    for t in range(T):
        assert torch.nonzero(mask[t]).flatten().tolist() == list(range(max(0, t - window + 1), t + 1))
    # at a cache offset the rows are those of the full mask
    full = attention_mask(0, T, window) if window < T else torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(attention_mask(7, 3, window), full[7:10, :10])


def test_sliding_window_limits_what_a_position_sees():
    model = make(n_layer=1, sliding_window=4).eval()  # one layer: the receptive field is the window
    x = torch.randint(0, 23, (1, 16))
    t = 10
    far, near = x.clone(), x.clone()
    far[0, : t - 3] = (far[0, : t - 3] + 1) % 23  # every position before t - N + 1
    near[0, t - 3] = (near[0, t - 3] + 1) % 23  # the oldest position still in the window
    base = model(x)[0][0, t]
    torch.testing.assert_close(model(far)[0][0, t], base, atol=1e-6, rtol=0)
    assert not torch.allclose(model(near)[0][0, t], base)


@pytest.mark.parametrize("window", [16, 40])
def test_window_at_least_block_size_is_full_attention(window):
    x = torch.randint(0, 23, (2, 16))
    full, windowed = make(seed=4).eval(), make(seed=4, sliding_window=window).eval()
    assert torch.equal(full(x)[0], windowed(x)[0])


# --- layerdrop and activation checkpointing -------------------------------------------------------------

def test_layerdrop_is_a_pure_function_of_seed_and_step():
    a = layerdrop_scales(0.5, 8, seed=3, step=11)
    assert a == layerdrop_scales(0.5, 8, seed=3, step=11)
    assert set(a) <= {0.0, 2.0}
    plans = [tuple(layerdrop_scales(0.5, 8, seed=3, step=s)) for s in range(200)]
    assert len(set(plans)) > 50
    dropped = sum(v == 0.0 for p in plans for v in p) / (200 * 8)
    assert 0.4 < dropped < 0.6
    assert layerdrop_scales(0.0, 8, seed=3, step=11) is None
    torch.manual_seed(0)
    before = torch.get_rng_state()
    layerdrop_scales(0.5, 8, seed=3, step=12)
    assert torch.equal(before, torch.get_rng_state())  # dropout's RNG is left alone


def test_layerdrop_skips_blocks_in_training_only():
    model = make(n_layer=1, layerdrop=0.5)
    steps = {layerdrop_scales(0.5, 1, seed=0, step=s)[0]: s for s in range(20)}
    x = torch.randint(0, 23, (2, 16))
    embedded = model.drop(model.pos_emb.embed(model.tok_emb(x), 0))
    no_blocks = model.softcap(model.head(model.norm_f(embedded)))

    model.train()
    model.set_layerdrop_step(0, steps[0.0])
    logits, loss = model(x, x)
    torch.testing.assert_close(logits, no_blocks)
    loss.backward()
    assert all(p.grad is None for p in model.blocks.parameters())  # the skipped block got no gradient

    model.set_layerdrop_step(0, steps[2.0])
    kept = model(x)[0]
    model.eval()
    evaluated = model(x)[0]  # eval: every block, unscaled, whatever the step said
    assert not torch.allclose(kept, evaluated) and not torch.allclose(evaluated, no_blocks)
    assert torch.equal(evaluated, make(n_layer=1).eval()(x)[0])


@pytest.mark.parametrize("combo", [{"dropout": 0.1}, ALL_ROPE], ids=["dropout", "all_rope"])
def test_grad_checkpointing_gives_same_loss_and_grads(combo):
    plain = make(**{**combo, "grad_checkpointing": False}).train()
    ckpt = make(**{**combo, "grad_checkpointing": True}).train()
    x = torch.randint(0, 23, (3, 17))
    results = []
    for model in (plain, ckpt):
        model.set_layerdrop_step(0, 1)
        torch.manual_seed(7)  # the same dropout masks; checkpointing must replay them in backward
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, atol=0, rtol=0)
    assert ga.keys() == gb.keys()
    for n in ga:
        if ga[n] is None:
            assert gb[n] is None, n
        else:
            torch.testing.assert_close(ga[n], gb[n], atol=1e-7, rtol=1e-6, msg=n)


# --- config and CLI -------------------------------------------------------------------------------------

def resolve(argv):
    return resolve_config(build_parser().parse_args(argv))[0]


def test_every_option_is_a_flag_that_reaches_the_model():
    cfg = resolve(["--weight_tying", "--mlp", "swiglu", "--mlp_hidden", "96", "--pos_encoding", "rope",
                   "--rope_theta", "500", "--norm", "rmsnorm", "--qk_norm", "--parallel_block",
                   "--sliding_window", "64", "--n_kv_head", "2", "--logit_softcap", "30", "--layerdrop", "0.1",
                   "--grad_checkpointing", "--no-kv_cache"])
    a = ModelArgs.from_config(cfg, vocab_size=10)
    assert (a.weight_tying, a.mlp, a.mlp_hidden, a.pos_encoding, a.rope_theta, a.norm, a.qk_norm,
            a.parallel_block, a.sliding_window, a.n_kv_head, a.logit_softcap, a.layerdrop,
            a.grad_checkpointing) == (True, "swiglu", 96, "rope", 500.0, "rmsnorm", True, True, 64, 2, 30.0, 0.1,
                                      True)
    assert cfg.kv_cache is False
    for key in ("weight_tying", "mlp", "pos_encoding", "norm", "sliding_window", "n_kv_head"):
        assert key in C.SHAPE_KEYS
    assert "layerdrop" not in C.SHAPE_KEYS and "grad_checkpointing" not in C.SHAPE_KEYS


@pytest.mark.parametrize("argv, needle", [
    (["--n_kv_head", "3"], "--n_head (4) must be divisible by --n_kv_head (3)"),
    (["--pos_encoding", "rope", "--n_embd", "36", "--n_head", "4"], "rope needs an even head size"),
    (["--sliding_window", "-1"], "--sliding_window must be at least 0"),
    (["--layerdrop", "1.0"], "--layerdrop must be at most 0.9"),
    (["--rope_theta", "0"], "--rope_theta must be greater than 0"),
    (["--logit_softcap", "-1"], "--logit_softcap must be at least 0"),
])
def test_bad_option_values_are_flag_errors(argv, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve(argv)


def test_layerdrop_training_resumes_bit_identically(corpus, tmp_path):
    common = [*TINY, *CLASSIC, "--n_layer", "2", "--layerdrop", "0.4", "--dropout", "0.1", "--eval_interval", "0",
              "--lr_decay_steps", "12"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(["--data_path", corpus, "--out_dir", straight, "--max_steps", "12", *common]) == 0
    assert run_cli(["--data_path", corpus, "--out_dir", split, "--max_steps", "6", *common]) == 0
    assert run_cli(["--out_dir", split, "--resume", "--max_steps", "12", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert b["step"] == 12 and a["model_args"]["layerdrop"] == 0.4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # and the training loop did drop blocks: without layerdrop the same run ends elsewhere
    no_drop = tmp_path / "no_drop"
    assert run_cli(["--data_path", corpus, "--out_dir", no_drop, "--max_steps", "12", *common,
                    "--layerdrop", "0"]) == 0
    c = load_checkpoint(no_drop / "ckpt.pt")
    assert not torch.equal(a["model"]["blocks.0.mlp.fc.weight"], c["model"]["blocks.0.mlp.fc.weight"])


def test_qk_norm_under_bf16_autocast_uses_the_fused_kernel():
    """q and k reach their RMSNorm in bf16 under autocast; a gain left in fp32 sends torch to its slow path,
    with a warning at every run."""
    import warnings

    model = GPT(ModelArgs(vocab_size=13, n_layer=1, n_head=2, n_embd=16, block_size=8, norm="rmsnorm",
                          qk_norm=True))
    x = torch.randint(0, 13, (2, 8))
    torch.set_warn_always(True)  # the warning is a once-per-process one: make it fire here too
    try:
        with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", torch.bfloat16):
            warnings.simplefilter("always")
            logits, _ = model(x)
    finally:
        torch.set_warn_always(False)
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
    ref, _ = model(x)  # fp32: the cast changes nothing there
    assert torch.allclose(logits.float(), ref, atol=0.1)


def test_attention_dropout_off_keeps_dropout_on_the_residual_branches_only():
    args = ModelArgs(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.5,
                     attention_dropout=False)
    model = GPT(args)
    attn = model.blocks[0].attn
    assert attn.dropout == 0.0 and attn.resid_drop.p == 0.5 and model.blocks[0].mlp.drop.p == 0.5
    assert GPT(ModelArgs(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8,
                         dropout=0.5)).blocks[0].attn.dropout == 0.5  # the default: attention weights too
    idx = torch.randint(0, 11, (2, 8))
    model.eval()
    a, _ = model(idx)
    b, _ = model(idx)
    assert torch.equal(a, b)  # no dropout at all in eval mode


def test_relu2_matches_autograd_chain_in_value_and_gradient() -> None:
    h = torch.randn(4, 7, 33, dtype=torch.float64, requires_grad=True)
    h.data[0, 0, :3] = 0.0  # relu's kink: both give gradient 0 there
    grad = torch.randn_like(h)
    (want,) = torch.autograd.grad(F.relu(h).square(), h, grad)
    out = _ReLU2.apply(h)
    (got,) = torch.autograd.grad(out, h, grad)
    assert torch.equal(out, F.relu(h).square())
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(_ReLU2.apply, (h[:1, :2].detach().clone().requires_grad_(),))


def test_fused_rmsnorm_matches_torch_in_value_and_gradient() -> None:
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(16, dtype=torch.float64)).requires_grad_()
    grad = torch.randn_like(x)
    want = F.rms_norm(x, (16,), w, 1e-5)
    want_gx, want_gw = torch.autograd.grad(want, (x, w), grad)
    got = _RMSNormFn.apply(x, w, 1e-5)
    got_gx, got_gw = torch.autograd.grad(got, (x, w), grad)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert torch.allclose(got_gx, want_gx, rtol=0, atol=1e-12)
    assert torch.allclose(got_gw, want_gw, rtol=0, atol=1e-12)
    small = (x[:1, :2].detach().clone().requires_grad_(), w.detach().clone().requires_grad_(), 1e-5)
    assert torch.autograd.gradcheck(_RMSNormFn.apply, small)


def test_rmsnorm_module_trains_through_the_fused_function_on_cpu() -> None:
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(4, 16, requires_grad=True)
    y = norm(x)
    assert type(y.grad_fn).__name__ == "_RMSNormFnBackward"
    assert torch.allclose(y, F.rms_norm(x, (16,), norm.weight, 1e-5), atol=1e-6)
    with torch.no_grad():  # inference keeps torch's own
        assert torch.allclose(norm(x), y, atol=1e-6)
