"""GGUF export: the file llama.cpp itself loads computes what tinyllm computes and tokenizes as tinyllm does.

Two layers of checks. Without llama.cpp: the file is read back with the `gguf` package and run through a
small numpy re-implementation of llama.cpp's gpt2 and llama graphs (consecutive-pair RoPE, fused or split
qkv, the output tensor or the tied embedding), which catches any layout mistake. With llama.cpp
(`llama-cpp-python`, installed by .ci/run; skipped with a reason where it is missing): each kind of export is
loaded by the real runtime, which must split a Unicode sample into tinyllm's ids, continue a prompt greedily
with tinyllm's tokens (f32), and reach, in q8_0, a perplexity within 2% of tinyllm's own on held-out text.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIC, TINY, exit_status, make_text, run_cli

from tinyllm.errors import UserError
from tinyllm.export import main
from tinyllm.generate import SamplingParams, generate, load_model
from tinyllm.model import GPT, ModelArgs
from tinyllm.tokenizer import CharTokenizer

gguf = pytest.importorskip("gguf", reason='GGUF export needs the gguf extra: pip install -e ".[gguf]"')

from tinyllm.export_gguf import choose_arch, write_gguf  # noqa: E402

SAMPLE = "Naïve café — 東京 🙂 a\\b\nthe cat"  # 2-, 3- and 4-byte characters, a backslash, a newline
CORPUS_TAIL = "Naïve café — 東京 🙂 on a warm mat, a\\b.\n" * 30
RUNS = {
    # learned positions -> gpt2, with grouped-query heads and a tied head
    "gpt2-char": ["--tokenizer", "char", "--n_head", "4", "--n_kv_head", "2", "--weight_tying"],
    # RoPE -> llama, with biases (q and k biases are permuted with their rows)
    "llama-char": ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "swiglu",
                   "--bias", "--rope_theta", "500"],
    "llama-bpe": ["--tokenizer", "bpe", "--bpe_vocab_size", "300", "--pos_encoding", "rope", "--norm", "rmsnorm",
                  "--mlp", "swiglu", "--no-bias", "--n_head", "4", "--n_kv_head", "2"],
    # RoPE with q/k norm and ReLU² (the default preset's architecture) -> apertus, ReLU² as its xIELU
    "apertus-char": ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "relu2",
                     "--qk_norm", "--no-bias", "--weight_tying", "--n_head", "4", "--n_kv_head", "2"],
    # RoPE with ReLU² and no q/k norm -> arcee, untied head
    "arcee-char": ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "relu2",
                   "--no-qk_norm", "--no-bias", "--n_head", "4", "--n_kv_head", "2", "--rope_theta", "500"],
    # RoPE with q/k norm and SwiGLU -> qwen3
    "qwen3-bpe": ["--tokenizer", "bpe", "--bpe_vocab_size", "300", "--pos_encoding", "rope", "--norm", "rmsnorm",
                  "--mlp", "swiglu", "--qk_norm", "--no-bias"],
}
ARCH = {"gpt2-char": "gpt2", "llama-char": "llama", "llama-bpe": "llama", "apertus-char": "apertus",
        "qwen3-bpe": "qwen3", "arcee-char": "arcee"}


def export(*args) -> int:
    return exit_status(main, args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The three kinds of run, each trained a few steps in fp32 (weights off their initialisation)."""
    home = tmp_path_factory.mktemp("gguf_runs")
    corpus = home / "corpus.txt"
    corpus.write_text(make_text(3000) + CORPUS_TAIL, encoding="utf-8")
    out = {}
    for name, flags in RUNS.items():
        run = home / name
        assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC, "--n_layer", "2", "--max_steps", "20",
                        "--eval_interval", "0", "--device", "cpu", *flags]) == 0
        out[name] = run
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(run, dtype) -> its GGUF file, written through the command line."""
    home = tmp_path_factory.mktemp("gguf_files")
    files = {}
    for name, run in runs.items():
        for dtype in ("f32", "q8_0"):
            path = home / f"{name}-{dtype}.gguf"
            assert export("--out_dir", run, "--format", "gguf", "--output", path, "--dtype", dtype) == 0
            files[name, dtype] = path
    return files


# --- reading the file back, without llama.cpp ---------------------------------------------------------------

def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    return fields, tensors


def rope_consecutive(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's normal RoPE: the pair (2i, 2i + 1) at position p turns by p * theta^(-2i/d)."""
    T, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]).float()
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * ang.cos() - b * ang.sin()
    out[..., 1::2] = a * ang.sin() + b * ang.cos()
    return out


def rope_halves(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's NeoX RoPE (the apertus graph's): the pair (i, i + d/2) turns by p * theta^(-2i/d)."""
    T, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]).float()
    a, b = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], dim=-1)


def xielu(x: torch.Tensor, fields: dict) -> torch.Tensor:
    """llama.cpp's xIELU from the file's stored parameters (it takes softplus of the two alphas)."""
    beta = fields["xielu.beta"]
    a_p = F.softplus(torch.tensor(fields["xielu.alpha_p"]))
    a_n = beta + F.softplus(torch.tensor(fields["xielu.alpha_n"]))
    neg = (torch.expm1(x.clamp(max=fields["xielu.eps"])) - x) * a_n + beta * x
    return torch.where(x > 0, a_p * x * x + beta * x, neg)


def reference_logits(fields: dict, t: dict[str, np.ndarray], ids: list[int], gelu: str = "none") -> torch.Tensor:
    """llama.cpp's gpt2, llama, apertus or qwen3 graph, written out plainly from the GGUF file's tensors and keys.
    `gelu` is torch's `approximate`: llama.cpp's gpt2 graph uses "tanh"; the exact form checks the layout alone."""
    arch = fields["general.architecture"]
    g = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in t.items()}

    def key(name):
        return fields[f"{arch}.{name}"]

    n_head, n_kv, C = key("attention.head_count"), key("attention.head_count_kv"), key("embedding_length")
    d, T = C // n_head, len(ids)
    x = g["token_embd.weight"][ids]
    if arch == "gpt2":
        x = x + g["position_embd.weight"][:T]
        eps = key("attention.layer_norm_epsilon")

        def norm(h, name):
            return F.layer_norm(h, (C,), g[f"{name}.weight"], g[f"{name}.bias"], eps)
    else:
        eps = key("attention.layer_norm_rms_epsilon")

        def norm(h, name):
            return F.rms_norm(h, (C,), g[f"{name}.weight"], eps)

    def lin(h, name):
        bias = g.get(f"{name}.bias")
        return F.linear(h, g[f"{name}.weight"], bias)

    for i in range(key("block_count")):
        b = f"blk.{i}"
        h = norm(x, f"{b}.attn_norm")
        if arch == "gpt2":
            q, k, v = lin(h, f"{b}.attn_qkv").split([C, n_kv * d, n_kv * d], dim=-1)
        else:
            q, k, v = lin(h, f"{b}.attn_q"), lin(h, f"{b}.attn_k"), lin(h, f"{b}.attn_v")
        q, k, v = (z.view(T, -1, d).transpose(0, 1) for z in (q, k, v))
        if arch in ("llama", "arcee"):
            q, k = rope_consecutive(q, key("rope.freq_base")), rope_consecutive(k, key("rope.freq_base"))
        if arch in ("apertus", "qwen3"):
            q = F.rms_norm(q, (d,), g[f"{b}.attn_q_norm.weight"], eps)
            k = F.rms_norm(k, (d,), g[f"{b}.attn_k_norm.weight"], eps)
            q, k = rope_halves(q, key("rope.freq_base")), rope_halves(k, key("rope.freq_base"))
        k, v = k.repeat_interleave(n_head // n_kv, 0), v.repeat_interleave(n_head // n_kv, 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, C)
        x = x + lin(y, f"{b}.attn_output")
        h = norm(x, f"{b}.ffn_norm")
        up = lin(h, f"{b}.ffn_up")
        if arch == "apertus":
            h = xielu(up, fields)
        elif arch == "arcee":
            h = F.relu(up).square()
        else:
            h = F.silu(lin(h, f"{b}.ffn_gate")) * up if arch != "gpt2" else F.gelu(up, approximate=gelu)
        x = x + lin(h, f"{b}.ffn_down")
    x = norm(x, "output_norm")
    return x @ g.get("output.weight", g["token_embd.weight"]).T


def perturbed(settings: dict) -> GPT:
    """A model whose weights are far from their initialisation, so a wrong layout shows in the logits."""
    torch.manual_seed(0)
    model = GPT(ModelArgs(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=24, **settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("settings", [
    {},
    {"bias": False, "weight_tying": True, "mlp_hidden": 48, "n_kv_head": 2},
    {"mlp": "gelu_tanh", "norm_eps": 1e-3},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": True, "rope_theta": 100.0,
     "norm_eps": 1e-3},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "n_kv_head": 1,
     "weight_tying": True},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": False, "n_kv_head": 2,
     "weight_tying": True, "rope_theta": 100.0},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": False, "mlp_hidden": 40},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False, "n_kv_head": 1},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "bias": False, "n_kv_head": 2, "rope_theta": 100.0},
    {"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "bias": False, "weight_tying": True,
     "mlp_hidden": 40, "norm_eps": 1e-3},
])
def test_gguf_layout_computes_tinyllm_logits(settings, tmp_path):
    model = perturbed(settings)
    tok = CharTokenizer([chr(ord("a") + i) for i in range(39)] + ["\n"])
    path = tmp_path / "m.gguf"
    counts = write_gguf(path, model, tok, {"temperature": 0.7, "top_k": 5}, 3, "m", "f32")
    assert set(counts) == {"f32"}
    fields, tensors = read_gguf(path)
    assert fields["general.architecture"] == choose_arch(model.args).name
    ids = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0]
    theirs = reference_logits(fields, tensors, ids, "tanh" if model.args.mlp == "gelu_tanh" else "none")
    assert ours.abs().max() > 1.0  # the check has something to see
    assert (ours - theirs).abs().max().item() < 1e-4


def test_metadata_and_types(exported, runs):
    fields, _ = read_gguf(exported["llama-bpe", "q8_0"])
    _, _, ckpt = load_model(str(runs["llama-bpe"]))
    cfg = ckpt["config"]
    assert fields["general.name"] == "llama-bpe"
    assert fields["llama.context_length"] == cfg["block_size"] == 32
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg["rope_theta"])
    assert fields["general.sampling.temp"] == pytest.approx(cfg["temperature"])
    assert fields["general.sampling.top_k"] == cfg["top_k"]
    assert fields["general.sampling.top_p"] == pytest.approx(cfg["top_p"])
    assert fields["general.sampling.penalty_repeat"] == pytest.approx(cfg["repetition_penalty"])
    assert fields["tinyllm.version"] == __import__("tinyllm").__version__
    assert fields["tinyllm.step"] == ckpt["step"]
    assert __import__("json").loads(fields["tinyllm.config"]) == cfg
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == 0 and fields["tokenizer.ggml.add_bos_token"] is False
    reader = gguf.GGUFReader(exported["llama-bpe", "q8_0"])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    char_fields, _ = read_gguf(exported["gpt2-char", "f32"])
    assert char_fields["tokenizer.ggml.model"] == "rwkv"
    assert "\\\\" in char_fields["tokenizer.ggml.tokens"]  # the backslash, escaped as the rwkv vocabulary wants


# --- refusals ---------------------------------------------------------------------------------------------

BASE = {"vocab_size": 10, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}


@pytest.mark.parametrize("change, flag", [
    ({"pos_encoding": "none"}, "--pos_encoding none"),
    ({"mlp": "relu2"}, "--mlp relu2"),
    ({"qk_norm": True}, "--qk_norm"),
    ({"parallel_block": True}, "--parallel_block"),
    ({"logit_softcap": 30.0}, "--logit_softcap 30.0"),
    ({"sliding_window": 8}, "--sliding_window 8"),
    ({"norm": "rmsnorm"}, "--norm rmsnorm"),
    ({"mlp": "swiglu"}, "--mlp swiglu"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2"}, "--bias"),
    ({"pos_encoding": "rope", "mlp": "relu2", "bias": False}, "--norm layernorm"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "gelu", "bias": False}, "--mlp gelu"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True}, "--bias"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "gelu", "qk_norm": True, "bias": False},
     "--mlp relu2 or swiglu"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": True}, "--bias"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": False,
      "norm_eps": 1e-6}, "--norm_eps 1e-06"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "sliding_window": 4}, "--sliding_window 4"),
    ({"pos_encoding": "rope", "mlp": "swiglu"}, "--norm layernorm"),
])
def test_unrepresentable_options_are_refused_by_name(change, flag):
    with pytest.raises(UserError) as e:
        choose_arch(ModelArgs(**BASE, **change))
    assert flag in str(e.value) and "GGUF" in str(e.value)


def test_representable_options_pick_the_architecture():
    assert choose_arch(ModelArgs(**BASE, bias=False, weight_tying=True, n_kv_head=1)).name == "gpt2"
    assert choose_arch(ModelArgs(**BASE, sliding_window=16)).name == "gpt2"  # a window as long as the context
    llama = ModelArgs(**BASE, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=True)
    assert choose_arch(llama).name == "llama"
    apertus = ModelArgs(**BASE, pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False)
    assert choose_arch(apertus).name == "apertus"
    assert choose_arch(replace(apertus, mlp="swiglu")).name == "qwen3"
    assert choose_arch(replace(apertus, qk_norm=False, weight_tying=True)).name == "arcee"


def test_an_option_unknown_to_the_exporter_is_refused(monkeypatch):
    import tinyllm.export_common as ex

    monkeypatch.setattr(ex, "HANDLED_FIELDS", ex.HANDLED_FIELDS - {"rope_theta"})
    with pytest.raises(UserError, match="--rope_theta 5.0 .*does not know"):
        choose_arch(replace(ModelArgs(**BASE), rope_theta=5.0))


def test_cli_refusal_writes_nothing(corpus, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out" / "m.gguf"
    assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC,
                    "--max_steps", "1", "--eval_interval", "0",
                    "--mlp", "relu2"]) == 0
    capsys.readouterr()
    assert export("--out_dir", run, "--format", "gguf", "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot export --mlp relu2 to GGUF") and "Traceback" not in err
    assert not out.parent.exists()  # refused before anything was created

    # --dtype belongs to GGUF; an existing file is replaced only with --overwrite.
    assert export("--out_dir", run, "--format", "hf", "--output", tmp_path / "hf", "--dtype", "q8_0") == 2
    assert "--dtype applies to --format gguf" in capsys.readouterr().err
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("mine")
    assert export("--out_dir", run, "--format", "gguf", "--output", out) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"


def test_a_failed_export_leaves_the_old_file_and_no_temporary(runs, tmp_path, monkeypatch):
    import tinyllm.export_gguf as eg

    out = tmp_path / "m.gguf"
    out.write_bytes(b"GGUF old")  # an earlier export: the kind of file --overwrite replaces

    def fail(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(eg, "add_tensors", fail)  # half way through writing the file
    with pytest.raises(RuntimeError):
        export("--out_dir", runs["gpt2-char"], "--format", "gguf", "--output", out, "--overwrite")
    assert out.read_bytes() == b"GGUF old" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    monkeypatch.undo()
    assert export("--out_dir", runs["gpt2-char"], "--format", "gguf", "--output", out, "--overwrite") == 0
    assert out.read_bytes()[:4] == b"GGUF" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_char_vocabulary_without_newline_is_refused(tmp_path):
    model = perturbed({})
    tok = CharTokenizer([chr(ord("a") + i) for i in range(40)])
    with pytest.raises(UserError, match="no newline"):
        write_gguf(tmp_path / "m.gguf", model, tok, {}, 0, "m", "f16")


def test_missing_gguf_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    assert export("--out_dir", tmp_path / "run", "--format", "gguf", "--output", tmp_path / "m.gguf") == 2
    assert '.[gguf]' in capsys.readouterr().err


# --- the real runtime: llama.cpp through llama-cpp-python -------------------------------------------------

def llama_cpp_module():
    return pytest.importorskip("llama_cpp", reason="llama.cpp checks need llama-cpp-python (.ci/run installs it: "
                                                   "pip install llama-cpp-python)")


def load_llama(path: Path, n_ctx: int, logits_all: bool = False):
    llama_cpp = llama_cpp_module()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=logits_all,
                           verbose=False, seed=0)


@pytest.mark.parametrize("name", list(RUNS))
def test_llama_cpp_tokenizes_like_tinyllm(name, runs, exported):
    llm = load_llama(exported[name, "f32"], 32)
    _, tok, _ = load_model(str(runs[name]))
    assert llm.metadata["general.architecture"] == ARCH[name] and llm.metadata["general.name"] == name
    assert llm.metadata[f"{ARCH[name]}.context_length"] == "32" and llm.n_vocab() == tok.vocab_size
    ids = tok.encode(SAMPLE)
    if tok.kind == "char":
        assert len(ids) == len(SAMPLE)  # one token per character, multi-byte ones included
    assert llm.tokenize(SAMPLE.encode("utf-8"), add_bos=False, special=True) == ids
    assert llm.detokenize(ids).decode("utf-8") == SAMPLE
    if tok.kind == "bpe":  # the end-of-text marker is one special token in both
        marked = "a cat.<|endoftext|>The dog"
        assert llm.tokenize(marked.encode(), add_bos=False, special=True) == tok.encode(marked)
        assert llm.token_eos() == tok.encode("<|endoftext|>")[0]


@pytest.mark.parametrize("name", list(RUNS))
def test_llama_cpp_greedy_continuation_equals_tinyllm(name, runs, exported):
    model, tok, _ = load_model(str(runs[name]))
    block = model.args.block_size
    prompt = tok.encode("The cat sat on")[:10]
    n_new = block - len(prompt)  # within the context: llama.cpp does not slide the window as tinyllm does
    mine = [int(t) for t in torch.cat(list(generate(model, torch.tensor([prompt]), n_new,
                                                     SamplingParams(temperature=0.0))), 1)[0]]
    llm = load_llama(exported[name, "f32"], block, logits_all=True)
    theirs = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        theirs.append(int(t))
        if len(theirs) == n_new:
            break
    assert theirs == mine, (tok.decode(theirs), tok.decode(mine))

    # and the logits themselves, over the whole window
    window = prompt + mine[:-1]
    llm.reset()
    llm.eval(window)
    theirs_logits = torch.from_numpy(np.array(llm.scores[:len(window)], dtype=np.float32))
    with torch.no_grad():
        ours_logits = model(torch.tensor([window]))[0][0]
    # Not bit-exact: llama.cpp keeps keys and values in an f16 cache by default, and its gpt2 graph reads GELU
    # (the tanh approximation) from a half-precision table.
    tol = 5e-3
    diff = (theirs_logits - ours_logits).abs().max().item()
    print(f"{name}: largest logit difference llama.cpp f32 vs tinyllm {diff:.2e}")
    assert diff < tol


def total_nll(logits: torch.Tensor, targets: list[int]) -> float:
    """Sum of -log p(target) over a window, from (T, V) logits."""
    return F.cross_entropy(logits.float(), torch.tensor(targets), reduction="sum").item()


@pytest.mark.parametrize("name", list(RUNS))
def test_llama_cpp_q8_0_perplexity_within_2_percent(name, runs, exported):
    """The same windows as tinyllm's evaluation (disjoint, block_size inputs each, every id after the first
    scored once), scored by tinyllm in fp32 and by llama.cpp from the q8_0 file's logits."""
    model, tok, _ = load_model(str(runs[name]))
    block = model.args.block_size
    held_out = tok.encode(make_text(800, seed=99))[:12 * block + 1]  # text the run never trained on
    windows = [(s, min(block, len(held_out) - 1 - s)) for s in range(0, len(held_out) - 1, block)]
    llm = load_llama(exported[name, "q8_0"], block, logits_all=True)
    ours = theirs = 0.0
    for s, n in windows:
        x, y = held_out[s:s + n], held_out[s + 1:s + n + 1]
        with torch.no_grad():
            ours += total_nll(model(torch.tensor([x]))[0][0], y)
        llm.reset()
        llm.eval(x)
        theirs += total_nll(torch.from_numpy(np.array(llm.scores[:n], dtype=np.float32)), y)
    ppl_ours, ppl_theirs = math.exp(ours / (len(held_out) - 1)), math.exp(theirs / (len(held_out) - 1))
    print(f"{name}: perplexity tinyllm {ppl_ours:.4f}, llama.cpp q8_0 {ppl_theirs:.4f}")
    assert ppl_ours < 0.8 * model.args.vocab_size  # trained: well below the uniform guess
    assert abs(ppl_theirs / ppl_ours - 1) < 0.02, (ppl_ours, ppl_theirs)
    try:  # tinyllm's own evaluation, where this version has it, scores these very windows
        from tinyllm.evaluate import evaluate_ids
    except ImportError:
        return
    figure = evaluate_ids(model, np.asarray(held_out), tok.byte_lengths(), progress=False)["perplexity"]
    assert figure == pytest.approx(ppl_ours, rel=1e-4)
