"""Importing Hugging Face models and tinyllm runs: the same logits, the same greedy tokens, the same tokens for
the same text, a round trip through the exporter, and a clear refusal of what tinyllm cannot compute."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing may download

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import CLASSIC, TINY, greedy_hf, make_text, run_cli  # noqa: E402

from tinyllm.checkpoint import save_checkpoint  # noqa: E402
from tinyllm.errors import UserError  # noqa: E402
from tinyllm.generate import SamplingParams, generate, load_model  # noqa: E402
from tinyllm.hf_import import build_model, load_model_and_tokenizer, load_source, model_args_equal  # noqa: E402
from tinyllm.model import GPT, ModelArgs  # noqa: E402
from tinyllm.tokenizer import tokenizer_from_json, tokenizer_hash  # noqa: E402

transformers = pytest.importorskip("transformers")
tk = pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

SAMPLE = "The cat sat on a warm mat.\n\nNaïve café — 東京 🙂 and the dog's    red barn!\n"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def training_text() -> list[str]:
    return [make_text(1500, seed=3), "Naïve café — 東京 🙂 on a warm mat.\n" * 20, "The dog's barn; 1234 cats!\n"]


def gpt2_tokenizer() -> tk.Tokenizer:
    """GPT-2's scheme: ByteLevel pre-tokenizer with its regex, <|endoftext|> as the last id (as GPT-2's 50256)."""
    t = tk.Tokenizer(tk.models.BPE())
    t.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = tk.decoders.ByteLevel()
    t.post_processor = tk.processors.ByteLevel(trim_offsets=True)
    t.train_from_iterator(training_text(), tk.trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.add_special_tokens(["<|endoftext|>"])
    return t


def llama3_tokenizer() -> tk.Tokenizer:
    """Llama 3's scheme: its own split regex, then bytes; BOS added by the post-processor; eos <|end_of_text|>."""
    t = tk.Tokenizer(tk.models.BPE())
    t.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Split(tk.Regex(LLAMA3_PATTERN), behavior="isolated"),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = tk.decoders.ByteLevel()
    t.train_from_iterator(training_text(), tk.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    t.post_processor = tk.processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    return t


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from their initialisation (biases and norm gains too), so that any wrong mapping, activation
    or eps shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def make_gpt2(folder, tie: bool = True, **config) -> tuple:
    tok = gpt2_tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    values = dict(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                  activation_function="gelu_new", layer_norm_epsilon=1e-6, tie_word_embeddings=tie,
                  bos_token_id=eot, eos_token_id=eot) | config
    cfg = transformers.GPT2Config(**values)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    perturb(hf)
    hf.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return hf, tok


def make_llama(folder, tie: bool = False, model_class: str = "Llama", **config) -> tuple:
    tok = llama3_tokenizer()
    values = dict(vocab_size=tok.get_vocab_size() + 6,  # a padded embedding, as real models often have
                  hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32, rope_theta=500.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=tie, bos_token_id=tok.token_to_id("<|begin_of_text|>"),
                  eos_token_id=tok.token_to_id("<|end_of_text|>")) | config
    config_class = getattr(transformers, f"{model_class}Config")
    hf = getattr(transformers, f"{model_class}ForCausalLM")(config_class(**values)).eval()
    perturb(hf)
    hf.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>",
                                                              "bos_token": "<|begin_of_text|>"}))
    return hf, tok


def make_qwen3(folder, tie: bool = True, **config) -> tuple:
    """Qwen 3's layer (Llama's plus an RMSNorm over each head's q and k) with tinyllm's q/k-norm eps."""
    return make_llama(folder, tie=tie, model_class="Qwen3", **({"rms_norm_eps": 1e-5, "head_dim": 8} | config))


MAKERS = {"gpt2": make_gpt2, "llama": make_llama, "qwen3": make_qwen3}


def greedy_tinyllm(model: GPT, prompt: torch.Tensor, n: int) -> list[int]:
    return [int(t) for t in torch.cat(list(generate(model, prompt, n, SamplingParams(temperature=0.0))), 1)[0]]


def logits_diff(model: GPT, hf, x: torch.Tensor) -> float:
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(input_ids=x).logits
    assert ours.abs().max() > 1.0  # the check has something to see
    return (ours - theirs).abs().max().item()


def save_as_run(src, folder) -> None:
    """A tinyllm checkpoint holding an imported model (what a fine-tuning run writes before its first step)."""
    folder.mkdir()
    save_checkpoint({"format_version": 1, "config": {"temperature": 0.0}, "model_args": src.args.to_dict(),
                     "model": src.state_dict, "tokenizer": src.tokenizer_json, "step": 0}, folder / "ckpt.pt")


@pytest.mark.parametrize("name", list(MAKERS))
def test_import_matches_transformers(name, tmp_path):
    folder = tmp_path / name
    hf, hf_tok = MAKERS[name](folder)
    model, tok, src = load_model_and_tokenizer(folder, "--init_from")
    assert src.kind == "hf" and src.architecture == type(hf).__name__
    assert type(hf).__name__ in src.description and str(folder) in src.description

    # The tokenizer: the same ids as `tokenizers` (without the BOS the post-processor adds), the same text back.
    ids = tok.encode(SAMPLE)
    assert ids == hf_tok.encode(SAMPLE, add_special_tokens=False).ids
    assert tok.encode_array(SAMPLE * 40).tolist() == hf_tok.encode(SAMPLE * 40, add_special_tokens=False).ids
    assert tok.decode(ids) == SAMPLE == hf_tok.decode(ids)
    eot = {"gpt2": "<|endoftext|>", "llama": "<|end_of_text|>", "qwen3": "<|end_of_text|>"}[name]
    assert tok.eot_token == eot and tok.eot_id == hf_tok.token_to_id(eot)
    assert tok.encode(f"a{eot}b")[1] == tok.eot_id
    assert tok.decode(tok.encode(f"a{eot}b")) == f"a{eot}b" == hf_tok.decode(tok.encode(f"a{eot}b"),
                                                                              skip_special_tokens=False)
    assert tokenizer_hash(tokenizer_from_json(tok.to_json())) == tokenizer_hash(tok)

    x = torch.tensor([ids[:32], ids[-32:]])
    assert logits_diff(model, hf, x) < 1e-4
    prompt = torch.tensor([ids[:6]])
    assert greedy_tinyllm(model, prompt, 12) == greedy_hf(hf, prompt, 12)

    # Export the imported model again: transformers computes the same, and importing that gives it back.
    run, again = tmp_path / "run", tmp_path / "again"
    save_as_run(src, run)
    from tinyllm.export_hf import export_hf

    export_hf(run, again)
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(again, local_files_only=True).eval()
    assert logits_diff(model, hf2, x) < 1e-4
    src2 = load_source(again)
    assert model_args_equal(src2.args, src.args)
    assert src2.state_dict.keys() == src.state_dict.keys()
    assert all(torch.equal(src2.state_dict[k], v) for k, v in src.state_dict.items())
    assert tokenizer_hash(tokenizer_from_json(src2.tokenizer_json)) == tokenizer_hash(tok)


def test_gpt2_options(tmp_path):
    """Exact GELU, an untied head and an explicit MLP width; a hub-style file (GPT2Model names, no
    "transformer." prefix, causal-mask buffers) loads too."""
    folder = tmp_path / "gpt2"
    hf, _ = make_gpt2(folder, tie=False, activation_function="gelu", n_inner=48)
    src = load_source(folder)
    assert (src.args.mlp, src.args.weight_tying, src.args.mlp_hidden, src.args.norm_eps) == ("gelu", False, 48, 1e-6)
    x = torch.randint(0, src.args.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    assert logits_diff(build_model(src), hf, x) < 1e-4

    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "model.safetensors")
    hub = {k.removeprefix("transformer."): v for k, v in sd.items()}
    for i in range(2):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    save_file(hub, folder / "model.safetensors")
    assert all(torch.equal(load_source(folder).state_dict[k], v) for k, v in src.state_dict.items())


def test_llama_tied_head_and_biases(tmp_path):
    folder = tmp_path / "llama"
    hf, _ = make_llama(folder, tie=True, attention_bias=True, mlp_bias=True, num_key_value_heads=1,
                       intermediate_size=64)
    src = load_source(folder)
    a = src.args
    assert (a.weight_tying, a.bias, a.n_kv_head, a.mlp_hidden, a.rope_theta) == (True, True, 1, 64, 500.0)
    x = torch.randint(0, a.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    assert logits_diff(build_model(src), hf, x) < 1e-4


# --- tinyllm runs ------------------------------------------------------------------------------------------

RUNS = {
    "gpt2-char": ["--tokenizer", "char", "--mlp", "gelu_tanh", "--norm_eps", "1e-6"],
    "gpt2-bpe-nobias": ["--tokenizer", "bpe", "--bpe_vocab_size", "300", "--no-bias", "--weight_tying"],
    "llama": ["--tokenizer", "bpe", "--bpe_vocab_size", "300", "--pos_encoding", "rope", "--norm", "rmsnorm",
              "--mlp", "swiglu", "--no-bias", "--n_head", "4", "--n_kv_head", "2", "--rope_theta", "500"],
    # ReLU² exports as relu gated by itself (gate_proj = up_proj) and comes back as one matrix
    "llama-relu2": ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "relu2", "--bias"],
    # the default preset's architecture
    "qwen3": ["--tokenizer", "char", "--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "relu2", "--qk_norm",
              "--no-bias", "--weight_tying"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_run_imports_identically_and_round_trips(name, corpus, tmp_path):
    run = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC,
                    "--max_steps", "4", "--eval_interval", "0",
                    *RUNS[name]]) == 0
    model, tok, ckpt = load_model(str(run))
    for path in (run, run / "ckpt.pt"):
        src = load_source(path)
        assert src.kind == "tinyllm" and src.step == 4 and src.run_config["data_path"] == str(corpus)
        assert src.args == ModelArgs(**ckpt["model_args"]) and src.tokenizer_json == ckpt["tokenizer"]
        assert all(torch.equal(src.state_dict[k], v) for k, v in model.state_dict().items())

    from tinyllm.export_hf import export_hf

    hf_dir = tmp_path / "hf"
    export_hf(run, hf_dir)
    back = load_source(hf_dir)
    assert back.kind == "hf" and model_args_equal(back.args, model.args), (back.args, model.args)
    assert back.state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(back.state_dict[k], v) for k, v in model.state_dict().items())
    assert tokenizer_hash(tokenizer_from_json(back.tokenizer_json)) == tokenizer_hash(tok)


def test_best_checkpoint_file(corpus, tmp_path):
    run = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC,
                    "--max_steps", "4", "--eval_interval", "2"]) == 0
    src = load_source(run / "ckpt_best.pt")
    assert "ckpt_best.pt" in src.description and src.path == str((run / "ckpt_best.pt").resolve())


# --- refusals ---------------------------------------------------------------------------------------------

def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def refused(path, *needles) -> str:
    with pytest.raises(UserError) as e:
        load_source(path, "--init_from")
    msg = str(e.value)
    assert "--init_from" in msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    make_gpt2(base / "gpt2")
    make_llama(base / "llama")
    make_qwen3(base / "qwen3")
    return base


@pytest.fixture
def gpt2_dir(hf_folders, tmp_path):
    return shutil.copytree(hf_folders / "gpt2", tmp_path / "gpt2")


@pytest.fixture
def llama_dir(hf_folders, tmp_path):
    return shutil.copytree(hf_folders / "llama", tmp_path / "llama")


@pytest.mark.parametrize("changes, needles", [
    ({"architectures": ["GPT2DoubleHeadsModel"]}, ["GPT2DoubleHeadsModel",
                                                    "GPT2LMHeadModel, LlamaForCausalLM and Qwen3ForCausalLM"]),
    ({"architectures": ["BertForMaskedLM"], "model_type": "bert"}, ["BertForMaskedLM"]),
    ({"activation_function": "quick_gelu"}, ["activation_function", "quick_gelu", "gelu_new"]),
    ({"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx"]),
    ({"scale_attn_weights": False}, ["scale_attn_weights"]),
    ({"add_cross_attention": True}, ["add_cross_attention"]),
    ({"quantization_config": {"quant_method": "gptq"}}, ["quantization_config"]),
    ({"n_embd": 48}, ["shape"]),
])
def test_gpt2_refusals(gpt2_dir, changes, needles):
    edit_config(gpt2_dir, **changes)
    refused(gpt2_dir, *needles)


@pytest.mark.parametrize("changes, needles", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, ["rope_scaling", "linear"]),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}}, ["rope_parameters"]),
    ({"attention_bias": True}, ["attention_bias", "mlp_bias"]),
    ({"hidden_act": "gelu"}, ["hidden_act", "silu"]),
    ({"hidden_act": "relu"}, ["ReGLU", "gate_proj"]),  # relu with gate_proj != up_proj
    ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "rms_norm_eps": 1e-5}, ["q_norm"]),
    ({"head_dim": 16}, ["head_dim"]),
    ({"num_key_value_heads": 3}, ["num_key_value_heads"]),
])
def test_llama_refusals(llama_dir, changes, needles):
    edit_config(llama_dir, **changes)
    refused(llama_dir, *needles)


@pytest.mark.parametrize("changes, needles", [
    ({"rms_norm_eps": 1e-6}, ["rms_norm_eps", "1e-05"]),  # tinyllm's q/k norms add 1e-5
    ({"attention_bias": True}, ["attention_bias"]),
    ({"use_sliding_window": True}, ["use_sliding_window"]),
])
def test_qwen3_refusals(hf_folders, tmp_path, changes, needles):
    folder = shutil.copytree(hf_folders / "qwen3", tmp_path / "qwen3")
    edit_config(folder, **changes)
    refused(folder, *needles)


def test_old_style_rope_config_is_read(llama_dir):
    edit_config(llama_dir, rope_parameters=..., rope_theta=321.0, rope_scaling=None)
    assert load_source(llama_dir).args.rope_theta == 321.0


def test_folder_and_file_refusals(gpt2_dir, tmp_path):
    refused(tmp_path / "nope", "no such file or folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "neither a tinyllm run", "Hugging Face")
    (tmp_path / "notckpt.pt").write_bytes(b"not a checkpoint")
    refused(tmp_path / "notckpt.pt", "corrupt")

    refused(gpt2_dir / "model.safetensors", "pass the Hugging Face model folder")
    shutil.copy(gpt2_dir / "tokenizer.json", tmp_path / "tok.json")
    (gpt2_dir / "tokenizer.json").unlink()
    refused(gpt2_dir, "no tokenizer.json")

    # A SentencePiece-style tokenizer (as Llama 2's) is not byte-level.
    sp = tk.Tokenizer(tk.models.BPE(vocab={"<unk>": 0, "▁": 1, "a": 2}, merges=[], unk_token="<unk>",
                                    byte_fallback=True))
    sp.pre_tokenizer = tk.pre_tokenizers.Metaspace()
    sp.decoder = tk.decoders.Sequence([tk.decoders.ByteFallback(), tk.decoders.Metaspace()])
    sp.save(str(gpt2_dir / "tokenizer.json"))
    refused(gpt2_dir, "byte-level BPE")

    # Weights missing, or truncated.
    shutil.copy(tmp_path / "tok.json", gpt2_dir / "tokenizer.json")
    data = (gpt2_dir / "model.safetensors").read_bytes()
    (gpt2_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(gpt2_dir, "model.safetensors", "corrupt")
    (gpt2_dir / "model.safetensors").unlink()
    refused(gpt2_dir, "no weights")


def test_pickle_weights_load_only_as_plain_tensors(gpt2_dir):
    src = load_source(gpt2_dir)
    from safetensors.torch import load_file

    sd = load_file(gpt2_dir / "model.safetensors")
    (gpt2_dir / "model.safetensors").unlink()
    torch.save(sd, gpt2_dir / "pytorch_model.bin")
    again = load_source(gpt2_dir)
    assert "pytorch_model.bin" in again.description
    assert all(torch.equal(again.state_dict[k], v) for k, v in src.state_dict.items())

    torch.save({**sd, "extra": shutil.copy}, gpt2_dir / "pytorch_model.bin")  # would run code when unpickled
    refused(gpt2_dir, "refusing", "safetensors")


def test_weights_and_config_that_do_not_match(gpt2_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(gpt2_dir / "model.safetensors")
    save_file({**sd, "transformer.h.9.mlp.c_fc.weight": torch.zeros(2, 2)}, gpt2_dir / "model.safetensors")
    refused(gpt2_dir, "h.9.mlp.c_fc.weight", "does not use")
    save_file({k: v for k, v in sd.items() if "h.1.ln_2" not in k}, gpt2_dir / "model.safetensors")
    refused(gpt2_dir, "h.1.ln_2", "lack")
    edit_config(gpt2_dir, vocab_size=100)
    refused(gpt2_dir, "tokenizer.json has")
