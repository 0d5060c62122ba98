"""Hugging Face export: the folder loads with plain transformers and computes what tinyllm computes."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing may download

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import CLASSIC, TINY, exit_status, greedy_hf, make_text, run_cli  # noqa: E402

from tinyllm.errors import UserError  # noqa: E402
from tinyllm.export import main  # noqa: E402
from tinyllm.export_hf import build_hf_model, choose_target  # noqa: E402
from tinyllm.generate import SamplingParams, generate, load_model  # noqa: E402
from tinyllm.model import GPT, ModelArgs  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

UNICODE_SAMPLE = "Naïve café — 東京 🙂\nthe cat"
# Trained a few steps in fp32: weights off their initialisation, biases and norm gains no longer 0 and 1.
TARGETS = {
    "gpt2": ("GPT2LMHeadModel", ["--tokenizer", "char"]),
    "llama": ("LlamaForCausalLM", ["--tokenizer", "bpe", "--bpe_vocab_size", "300", "--pos_encoding", "rope",
                                   "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias", "--weight_tying",
                                   "--n_head", "4", "--n_kv_head", "2", "--rope_theta", "500"]),
    # the default preset's architecture: ReLU² as Qwen 3's gated MLP gated by itself, and q/k norm
    "qwen3": ("Qwen3ForCausalLM", ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm",
                                   "--mlp", "relu2", "--qk_norm", "--no-bias", "--weight_tying"]),
}


def export(*args) -> int:
    return exit_status(main, args)


@pytest.fixture
def unicode_corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(4000) + ("Naïve café — 東京 🙂 on a warm mat.\n" * 30), encoding="utf-8")
    return p


def train(corpus, out, *flags) -> None:
    assert run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *CLASSIC,
                    "--max_steps", "6", "--eval_interval", "0",
                    *flags]) == 0


@pytest.mark.parametrize("name", list(TARGETS))
def test_export_matches_tinyllm(name, unicode_corpus, tmp_path, capsys):
    arch, flags = TARGETS[name]
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    train(unicode_corpus, run, *flags)
    assert export("--out_dir", run, "--format", "hf", "--output", hf_dir) == 0
    assert "exported" in capsys.readouterr().err
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (hf_dir / f).is_file(), f
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == [arch]

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    assert type(hf).__name__ == arch
    ours, tok, _ = load_model(str(run))

    ids = tok.encode(UNICODE_SAMPLE)
    assert hf_tok(UNICODE_SAMPLE)["input_ids"] == ids
    assert hf_tok.decode(ids) == UNICODE_SAMPLE

    x = torch.tensor([ids[:32]])
    with torch.no_grad():
        diff = (ours(x)[0] - hf(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4, diff

    # transformers' own generate runs on it, with the run's sampling settings (generation_config.json; at least
    # 4 tokens, since a BPE run may end its text sooner) ...
    prompt = torch.tensor([ids[:8]])
    assert hf.generate(prompt, max_new_tokens=4, min_new_tokens=4).shape == (1, 12)
    # ... and greedily picks the tokens tinyllm picks.
    greedy = SamplingParams(temperature=0.0)
    mine = [int(t) for t in torch.cat(list(generate(ours, prompt, 6, greedy)), 1)[0]]
    assert greedy_hf(hf, prompt, 6) == mine

    if tok.kind == "char":  # no unknown token in either: a character outside the vocabulary is an error
        with pytest.raises(UserError):
            tok.encode("§")
        with pytest.raises(Exception, match="UNK|unk"):
            hf_tok("§")


@pytest.mark.parametrize("settings", [
    {},
    {"bias": False, "weight_tying": True, "mlp_hidden": 48},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": True, "rope_theta": 100.0},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "n_kv_head": 1,
     "weight_tying": True},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "bias": True, "rope_theta": 100.0},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": False,
     "weight_tying": True},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False, "n_kv_head": 1,
     "mlp_hidden": 40},
])
def test_mapping_is_exact_with_large_weights(settings):
    """Weights far from their small initialisation (every pre-activation of order 1), so that a wrong
    activation (GELU vs its tanh approximation), eps, RoPE pairing or head split shows in the logits."""
    torch.manual_seed(0)
    model = GPT(ModelArgs(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=24, **settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf = build_hf_model(model, choose_target(model.args), None)
    x = torch.randint(0, 40, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(input_ids=x).logits
    assert ours.abs().max() > 1.0  # the check has something to see
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("change, flag", [
    ({"pos_encoding": "none"}, "--pos_encoding none"),
    ({"norm": "rmsnorm"}, "--norm rmsnorm"),
    ({"mlp": "relu2"}, "--mlp relu2"),
    ({"n_kv_head": 1}, "--n_kv_head 1"),
    ({"qk_norm": True}, "--qk_norm"),
    ({"parallel_block": True}, "--parallel_block"),
    ({"logit_softcap": 30.0}, "--logit_softcap 30.0"),
    ({"sliding_window": 8}, "--sliding_window 8"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "gelu"}, "--mlp gelu"),
    ({"pos_encoding": "rope", "mlp": "swiglu"}, "--norm layernorm"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": True}, "--bias"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "norm_eps": 1e-6},
     "--norm_eps 1e-06"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "gelu", "qk_norm": True}, "--mlp gelu"),
])
def test_unexportable_settings_name_the_option(change, flag):
    args = ModelArgs(vocab_size=10, n_layer=1, n_head=2, n_embd=16, block_size=16, **change)
    with pytest.raises(UserError) as e:
        choose_target(args)
    assert flag in str(e.value)


def test_exportable_settings_pick_the_target():
    base = {"vocab_size": 10, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
    assert choose_target(ModelArgs(**base, bias=False, weight_tying=True)).architecture == "GPT2LMHeadModel"
    # A window as long as the context is no window at all.
    assert choose_target(ModelArgs(**base, sliding_window=16)).architecture == "GPT2LMHeadModel"
    llama = ModelArgs(**base, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1)
    assert choose_target(llama).architecture == "LlamaForCausalLM"
    assert choose_target(ModelArgs(**base, pos_encoding="rope", norm="rmsnorm", mlp="relu2",
                                   bias=True)).architecture == "LlamaForCausalLM"
    for mlp in ("relu2", "swiglu"):
        qwen3 = ModelArgs(**base, pos_encoding="rope", norm="rmsnorm", mlp=mlp, qk_norm=True, bias=False)
        assert choose_target(qwen3).architecture == "Qwen3ForCausalLM"


def test_export_errors_and_atomic_output(corpus, tmp_path, capsys, monkeypatch):
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    train(corpus, run, "--max_steps", "1", "--mlp", "relu2")
    assert export("--out_dir", run, "--output", hf_dir) == 2
    err = capsys.readouterr().err
    assert "--mlp relu2" in err and "Traceback" not in err
    assert not hf_dir.exists()

    train(corpus, run, "--max_steps", "1", "--overwrite")
    hf_dir.mkdir()  # an earlier export (the only kind of folder --overwrite replaces), with a file of the user's
    (hf_dir / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}')
    (hf_dir / "keep.txt").write_text("mine")
    assert export("--out_dir", run, "--output", hf_dir) == 2  # never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and (hf_dir / "keep.txt").read_text() == "mine"

    import tinyllm.export_hf as ex

    def fail(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ex, "self_check", fail)  # a failure half way through writing the folder
    with pytest.raises(RuntimeError):
        export("--out_dir", run, "--output", hf_dir, "--overwrite")
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "hf", "run"]  # no temporary left
    monkeypatch.undo()

    assert export("--out_dir", run, "--output", hf_dir, "--overwrite") == 0
    assert not (hf_dir / "keep.txt").exists() and (hf_dir / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "hf", "run"]


def test_missing_transformers_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    assert export("--out_dir", tmp_path / "run", "--output", tmp_path / "hf") == 2
    assert '.[export]' in capsys.readouterr().err
