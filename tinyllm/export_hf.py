"""Export a run to a Hugging Face model folder that `transformers` loads with no custom code.

    python -m tinyllm.export --out_dir RUN --format hf --output DIR [--ckpt last|best]   (see tinyllm.export)

The position scheme picks the target: learned positions -> `GPT2LMHeadModel`, RoPE -> `LlamaForCausalLM`, or
`Qwen3ForCausalLM` with --qk_norm (Qwen 3 has Llama's layers plus an RMSNorm over each head's q and k, as
tinyllm's q/k norm). Every other option must then be one that the target computes exactly; anything else is
refused with an error naming the option, because an export that loads but computes something else would be
worse than none.

Both RoPE targets have a gated MLP, down(act(gate(x)) * up(x)). SwiGLU is that with act = silu. ReLU² is too:
with act = relu and gate = up = tinyllm's one fc matrix, relu(h) * h = relu(h)² exactly (both are 0 where
h <= 0), at the cost of storing that matrix twice.

The weights are renamed (and for GPT-2 transposed: its layers are `Conv1D`, which store (in, out)), loaded
strictly into the transformers model (a missing or extra tensor is an error), checked against tinyllm's own
logits on a short input, and saved with `save_pretrained` as safetensors. tinyllm's RoPE already uses the
split-halves pairing of Llama's `rotate_half`, so q and k need no permutation. The tokenizer is written as a
`tokenizers` JSON that `PreTrainedTokenizerFast` reads: the BPE as it is, the char tokenizer as a word-level
vocabulary of single characters after a pre-tokenizer that splits every character apart.

The folder is built under a temporary name beside --output and renamed into place only when complete, so an
interrupted or failed export never leaves a half-written model folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyllm.errors import UserError
from tinyllm.export_common import (
    GATED_ACTIVATIONS,
    check_known_options,
    check_output,
    common_needs,
    flag,
    qk_norm_target_needs,
    refuse_unmet,
)
from tinyllm.model import GPT, ModelArgs, mlp_hidden_size

EXPORT_HINT = 'pip install -e ".[export]"'
# fp32 logits of the exported model must match tinyllm's this closely on the self-check input.
SELF_CHECK_TOL = 1e-3
WHERE = "Hugging Face"

Tensors = dict[str, torch.Tensor]


def _transformers() -> Any:
    try:
        import safetensors  # noqa: F401 - save_pretrained needs it for the weights file
        import transformers
    except ImportError:
        raise UserError("--format hf needs the `transformers` and `safetensors` packages; install the extra: "
                        f"{EXPORT_HINT}") from None
    return transformers


# --- which target, and whether this run fits it -----------------------------------------------------------

@dataclass(frozen=True)
class Target:
    architecture: str  # the transformers class the folder loads as
    config: Callable[[ModelArgs, int | None], Any]  # (model args, end-of-text id) -> transformers config
    weights: Callable[[Tensors, ModelArgs], Tensors]  # tinyllm state dict -> transformers state dict
    # (flag, this run's value, the value the target needs) for the options it has only one setting of
    needs: Callable[[ModelArgs], list[tuple[str, Any, Any]]]
    qk_norm: bool = False  # whether it normalises each head's q and k


def choose_target(a: ModelArgs) -> Target:
    """The target for these settings, or a UserError naming the first option that prevents export."""
    check_known_options(a, WHERE)
    target = TARGETS.get("rope+qk_norm" if a.pos_encoding == "rope" and a.qk_norm else a.pos_encoding)
    if target is None:
        raise UserError(f"cannot export {flag('pos_encoding', a.pos_encoding)} to {WHERE}: neither "
                        "GPT2LMHeadModel (--pos_encoding learned) nor LlamaForCausalLM (--pos_encoding rope) "
                        "has a model without positions")
    refuse_unmet(a, common_needs(a, target.qk_norm) + target.needs(a), WHERE, target.architecture)
    return target


def describe(a: ModelArgs, tokenizer: Any) -> str:
    """One line: what this model exports as (or the UserError naming what prevents it)."""
    target = choose_target(a)
    for module in ("transformers", "safetensors", "tokenizers"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--format hf needs the `{module}` package; install the extra: {EXPORT_HINT}")
    kind = "byte-level BPE" if tokenizer.kind == "bpe" else "single characters (word-level)"
    return f"{target.architecture}, {a.n_layer} layers, tokenizer: {kind}, float32 safetensors"


# --- weight renaming --------------------------------------------------------------------------------------

def _linear(out: Tensors, dst: str, sd: Tensors, src: str, transpose: bool = False, bias: bool = True) -> None:
    """Copy a Linear's weight (transposed for GPT-2's Conv1D) and bias; a target that always has a bias gets
    zeros where tinyllm has none (--no-bias), which computes the same thing."""
    w = sd[f"{src}.weight"]
    out[f"{dst}.weight"] = w.t() if transpose else w
    if bias:
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(w.shape[0], dtype=w.dtype))


def _norm(out: Tensors, dst: str, sd: Tensors, src: str, bias: bool) -> None:
    w = sd[f"{src}.weight"]
    out[f"{dst}.weight"] = w
    if bias:
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros_like(w))


def gpt2_weights(sd: Tensors, a: ModelArgs) -> Tensors:
    out: Tensors = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(a.n_layer):
        src, dst = f"blocks.{i}", f"transformer.h.{i}"
        _norm(out, f"{dst}.ln_1", sd, f"{src}.norm1", bias=True)
        _linear(out, f"{dst}.attn.c_attn", sd, f"{src}.attn.qkv", transpose=True)
        _linear(out, f"{dst}.attn.c_proj", sd, f"{src}.attn.proj", transpose=True)
        _norm(out, f"{dst}.ln_2", sd, f"{src}.norm2", bias=True)
        _linear(out, f"{dst}.mlp.c_fc", sd, f"{src}.mlp.fc", transpose=True)
        _linear(out, f"{dst}.mlp.c_proj", sd, f"{src}.mlp.proj", transpose=True)
    _norm(out, "transformer.ln_f", sd, "norm_f", bias=True)
    out["lm_head.weight"] = sd["head.weight"]
    return out


def llama_weights(sd: Tensors, a: ModelArgs) -> Tensors:
    out: Tensors = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    kv_dim = a.kv_heads * a.head_dim
    for i in range(a.n_layer):
        src, dst = f"blocks.{i}", f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = sd[f"{src}.norm1.weight"]
        # tinyllm fuses q, k and v into one matrix, in that order along the output dimension.
        for part in ("weight", "bias") if a.bias else ("weight",):
            q, k, v = sd[f"{src}.attn.qkv.{part}"].split([a.n_embd, kv_dim, kv_dim], dim=0)
            out.update({f"{dst}.self_attn.q_proj.{part}": q, f"{dst}.self_attn.k_proj.{part}": k,
                        f"{dst}.self_attn.v_proj.{part}": v})
            # SwiGLU's fused matrix holds the gate first, then the up projection; ReLU² is gated by itself
            # (see the module docstring).
            fc = sd[f"{src}.mlp.fc.{part}"]
            gate, up = fc.chunk(2, dim=0) if a.mlp == "swiglu" else (fc, fc)
            out.update({f"{dst}.mlp.gate_proj.{part}": gate, f"{dst}.mlp.up_proj.{part}": up})
        if a.qk_norm:
            for n in ("q_norm", "k_norm"):
                out[f"{dst}.self_attn.{n}.weight"] = sd[f"{src}.attn.{n}.weight"]
        _linear(out, f"{dst}.self_attn.o_proj", sd, f"{src}.attn.proj", bias=a.bias)
        _linear(out, f"{dst}.mlp.down_proj", sd, f"{src}.mlp.proj", bias=a.bias)
        out[f"{dst}.post_attention_layernorm.weight"] = sd[f"{src}.norm2.weight"]
    out["model.norm.weight"] = sd["norm_f.weight"]
    out["lm_head.weight"] = sd["head.weight"]
    return out


# --- configs ----------------------------------------------------------------------------------------------

# tinyllm's --mlp -> GPT-2's activation_function: F.gelu (exact, erf) or its tanh form ("gelu_new", GPT-2's own).
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}

def gpt2_config(a: ModelArgs, eot_id: int | None) -> Any:
    t = _transformers()
    return t.GPT2Config(
        vocab_size=a.vocab_size, n_positions=a.block_size, n_embd=a.n_embd, n_layer=a.n_layer, n_head=a.n_head,
        n_inner=mlp_hidden_size(a),
        activation_function=GPT2_ACTIVATIONS[a.mlp],
        resid_pdrop=a.dropout, embd_pdrop=a.dropout, attn_pdrop=a.dropout,
        layer_norm_epsilon=a.norm_eps, bos_token_id=eot_id, eos_token_id=eot_id,
        pad_token_id=None, tie_word_embeddings=a.weight_tying, architectures=["GPT2LMHeadModel"],
    )


def _rope_config(config_class: str, architecture: str, a: ModelArgs, eot_id: int | None, **extra: Any) -> Any:
    return getattr(_transformers(), config_class)(
        vocab_size=a.vocab_size, hidden_size=a.n_embd, intermediate_size=mlp_hidden_size(a),
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim, hidden_act=GATED_ACTIVATIONS[a.mlp], max_position_embeddings=a.block_size,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, attention_bias=a.bias, attention_dropout=a.dropout,
        # Llama's defaults (bos 1, eos 2) would make generate stop at whatever token has id 2.
        bos_token_id=None, eos_token_id=eot_id, pad_token_id=None,
        tie_word_embeddings=a.weight_tying, architectures=[architecture], **extra,
    )


def llama_config(a: ModelArgs, eot_id: int | None) -> Any:
    return _rope_config("LlamaConfig", "LlamaForCausalLM", a, eot_id, mlp_bias=a.bias)


def qwen3_config(a: ModelArgs, eot_id: int | None) -> Any:
    return _rope_config("Qwen3Config", "Qwen3ForCausalLM", a, eot_id, use_sliding_window=False)


def _gated_mlp(a: ModelArgs) -> tuple[str, Any, Any]:
    return ("mlp", "swiglu or relu2" if a.mlp in GATED_ACTIVATIONS else a.mlp, "swiglu or relu2")


TARGETS: dict[str, Target] = {
    "learned": Target("GPT2LMHeadModel", gpt2_config, gpt2_weights, lambda a: [
        ("norm", a.norm, "layernorm"),
        ("mlp", "gelu or gelu_tanh" if a.mlp in GPT2_ACTIVATIONS else a.mlp, "gelu or gelu_tanh"),
        ("n_kv_head", a.kv_heads, a.n_head)]),
    "rope": Target("LlamaForCausalLM", llama_config, llama_weights, lambda a: [
        ("norm", a.norm, "rmsnorm"), _gated_mlp(a)]),
    "rope+qk_norm": Target("Qwen3ForCausalLM", qwen3_config, llama_weights, lambda a: [
        ("norm", a.norm, "rmsnorm"), _gated_mlp(a), *qk_norm_target_needs(a)], qk_norm=True),
}


# --- tokenizer --------------------------------------------------------------------------------------------

def tokenizer_backend(tokenizer: Any) -> Any:
    """A `tokenizers.Tokenizer` that gives the same ids as ours for every text ours accepts."""
    try:
        import tokenizers as tk
    except ImportError:
        raise UserError(f"--format hf needs the `tokenizers` package; install the extra: {EXPORT_HINT}") from None
    if tokenizer.kind == "bpe":
        return tk.Tokenizer.from_str(json.dumps(json.loads(tokenizer.to_json())["tokenizers"]))
    # One piece per code point ([\s\S]: Oniguruma's "." skips newlines), each looked up whole. There is no
    # unknown token, as in tinyllm: a character outside the vocabulary is an error, never a silent id.
    backend = tk.Tokenizer(tk.models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
    backend.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = tk.decoders.Fuse()  # join the characters with nothing between them
    return backend


def write_tokenizer(tokenizer: Any, folder: Path, block_size: int) -> int | None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the end-of-text id."""
    backend = tokenizer_backend(tokenizer)
    (folder / "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
    eot = getattr(tokenizer, "eot_token", None)  # a BPE's end-of-text token (an imported one may have none)
    specials = {"eos_token": eot, "bos_token": eot, "pad_token": eot} if eot is not None else {}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    return backend.token_to_id(eot) if specials else None


def generation_config(cfg: dict[str, Any], eot_id: int | None, block_size: int) -> Any:
    """The run's sampling settings as a GenerationConfig (temperature 0 = greedy, top_k 0 = off)."""
    t = _transformers()
    greedy = cfg.get("temperature", 0.8) == 0
    sampling = {} if greedy else {"temperature": cfg.get("temperature", 0.8), "top_k": cfg.get("top_k", 0),
                                  "top_p": cfg.get("top_p", 1.0)}
    # max_length, not the run's sample length: transformers does not slide the context window as tinyllm
    # does, and GPT-2's learned positions end at block_size.
    return t.GenerationConfig(do_sample=not greedy, max_length=block_size,
                              repetition_penalty=cfg.get("repetition_penalty", 1.0), bos_token_id=None,
                              eos_token_id=eot_id, pad_token_id=eot_id, **sampling)


# --- the export -------------------------------------------------------------------------------------------

def build_hf_model(model: GPT, target: Target, eot_id: int | None) -> Any:
    """The transformers model holding `model`'s weights (strictly: every tensor accounted for)."""
    t = _transformers()
    a = model.args
    hf = getattr(t, target.architecture)(target.config(a, eot_id)).float().eval()
    mapped = {k: v.detach().float().contiguous() for k, v in target.weights(model.state_dict(), a).items()}
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    params = {n for n, _ in hf.named_parameters(remove_duplicate=False)}
    missing = [k for k in missing if k in params]
    if missing or unexpected:  # a tinyllm change the mapping does not know about: never export it half-mapped
        raise RuntimeError(f"export mapping is out of date: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if a.weight_tying:
        hf.tie_weights()
    return hf


@torch.no_grad()
def self_check(model: GPT, hf: Any) -> float:
    """Max |logit difference| between tinyllm and the transformers model on a fixed input."""
    n = min(model.args.block_size, 16)
    idx = torch.randint(0, model.args.vocab_size, (2, n), generator=torch.Generator().manual_seed(0))
    ours = model.float().eval()(idx)[0]
    theirs = hf(input_ids=idx).logits
    return float((ours - theirs).abs().max())


def _finish(folder: Path) -> None:
    """Give the folder and its files the modes a plain mkdir/open would have (mkdtemp makes the folder
    private), and fsync the files so that the rename publishes complete ones."""
    umask = os.umask(0o022)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _place(tmp: Path, output: Path) -> None:
    """Rename the finished folder to --output; an old --output (only with --overwrite) goes only after."""
    if output.exists() and any(output.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)


def export_hf(out_dir: str | Path, output: str | Path, which: str = "last", use_ema: bool = True,
              overwrite: bool = False) -> Path:
    """Write the Hugging Face folder for the run in out_dir; returns its path."""
    from tinyllm.generate import load_model

    output = Path(output)
    check_output(out_dir, output, "hf", overwrite)
    _transformers().utils.logging.disable_progress_bar()  # one line of output, not a bar per file
    model, tokenizer, ckpt = load_model(str(out_dir), which, "cpu", use_ema=use_ema)
    target = choose_target(model.args)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        eot_id = write_tokenizer(tokenizer, tmp, model.args.block_size)
        hf = build_hf_model(model, target, eot_id)
        diff = self_check(model, hf)
        if not diff <= SELF_CHECK_TOL:
            raise RuntimeError(f"the exported {target.architecture} computes different logits from tinyllm "
                               f"(max difference {diff:.2e}); please report this with the run's config.json")
        hf.save_pretrained(tmp, safe_serialization=True)
        generation_config(ckpt["config"], eot_id, model.args.block_size).save_pretrained(tmp)
        _finish(tmp)
        _place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {out_dir} (step {ckpt['step']}) as {target.architecture} to {output} "
          f"(max logit difference {diff:.1e})", file=sys.stderr)
    return output
