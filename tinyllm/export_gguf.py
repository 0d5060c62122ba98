"""Export a run to one GGUF file for llama.cpp (and what is built on it: Ollama, LM Studio).

    python -m tinyllm.export --out_dir RUN --format gguf --output model.gguf [--dtype f32|f16|q8_0] [--ckpt best]

The file is written with the `gguf` package, the writer that llama.cpp publishes on PyPI. The position scheme
picks llama.cpp's architecture, and every other option must be one that this architecture computes; anything
else is refused with an error naming the option:

* learned positions + LayerNorm + GELU -> `gpt2`: fused qkv (tinyllm's order, q then k then v, is GPT-2's),
  every bias (zeros where the run has none: the same function), grouped-query heads. llama.cpp computes this
  graph's GELU in its tanh form (from a half-precision table): `--mlp gelu_tanh` exactly, `--mlp gelu` (the erf
  form) within about 1e-3 in the logits; the tests check that greedy continuations agree.
* RoPE + RMSNorm + SwiGLU -> `llama`: grouped-query heads, rope_theta, biases or none, tied or untied head.
  llama.cpp's `llama` RoPE turns consecutive pairs (0, 1), (2, 3)..., tinyllm's the split halves (i, i + d/2),
  so the rows of q and k are permuted within each head, as llama.cpp's own converter does for Hugging Face
  Llama weights; the scores q.k are unchanged.
* RoPE + RMSNorm + q/k norm + ReLU² (the default preset) -> `apertus`: Llama's layer with an RMSNorm over each
  head's q and k, NeoX RoPE (tinyllm's split halves: no permutation) and an ungated MLP whose xIELU activation
  is stored so that it computes relu(x)² (RELU2_AS_XIELU). No biases; its q/k norms use the others' eps.
* RoPE + RMSNorm + q/k norm + SwiGLU -> `qwen3`: the same layer with llama's gated MLP.
* RoPE + RMSNorm + ReLU² without q/k norm -> `arcee`: Llama's layer (its RoPE, so q and k permuted as for
  `llama`) with an ungated relu(x)² MLP. No biases.

Tokenizers:

* BPE -> llama.cpp's byte-level BPE (tokenizer model `gpt2`): the same tokens (byte-level strings), the same
  merges, and the pre-tokenizer `gpt-2`, whose regular expression is the one tinyllm's BPE splits with
  (ByteLevel, no prefix space). `<|endoftext|>` is a control token and the end-of-text id.
* char -> tokenizer model `rwkv`: llama.cpp splits text by the longest vocabulary entry matching its UTF-8
  bytes, with no normalisation, no prefix space and no byte fallback. A vocabulary of single characters is
  prefix-free in UTF-8, so every character, multi-byte ones included, becomes exactly its own token. It has no
  BOS/EOS defaults either (the `llama` and `gpt2` models would make id 2, or 11, end generation). llama.cpp
  needs a newline in such a vocabulary, and cannot tokenize a character the vocabulary lacks (tinyllm refuses
  one too); backslashes are escaped as this model's vocabulary format wants.

Metadata: general.name (the run folder's name), the context length, the run's sampling defaults as
`general.sampling.*`, and `tinyllm.version`, `tinyllm.step`, `tinyllm.config` (the run's config as JSON).

dtype: f32, f16 (default) or q8_0 for the matrices; norms, biases and the position table stay f32, as in
llama.cpp's converter, and a matrix whose rows do not split into q8_0's blocks of 32 is written in f16.
The file is written under a temporary name beside --output and renamed into place when complete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllm import __version__
from tinyllm.errors import UserError
from tinyllm.export_common import (
    GGUF_DTYPES,
    check_known_options,
    check_output,
    common_needs,
    flag,
    qk_norm_target_needs,
    refuse_unmet,
)
from tinyllm.model import GPT, ModelArgs, mlp_hidden_size
from tinyllm.tokenizer import EOT_TOKEN

GGUF_HINT = 'pip install -e ".[gguf]"'
WHERE = "GGUF"
Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of this many values

Tensors = dict[str, torch.Tensor]
Named = Iterator[tuple[str, torch.Tensor]]


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError(f"--format gguf needs the `gguf` package; install the extra: {GGUF_HINT}") from None
    return gguf


# --- which architecture, and whether this run fits it ----------------------------------------------------

@dataclass(frozen=True)
class Arch:
    name: str  # llama.cpp's general.architecture
    needs: Callable[[ModelArgs], list[tuple[str, Any, Any]]]
    tensors: Callable[[Tensors, ModelArgs], Named]  # tinyllm state dict -> (GGUF name, tensor)
    hparams: Callable[[Any, ModelArgs], None]  # writes the architecture's keys
    qk_norm: bool = False  # whether it normalises each head's q and k


def _bias(sd: Tensors, name: str, size: int) -> torch.Tensor:
    """A bias, or zeros where tinyllm has none (--no-bias): llama.cpp's gpt2 graph requires every bias."""
    return sd.get(name, torch.zeros(size))


def gpt2_tensors(sd: Tensors, a: ModelArgs) -> Named:
    yield "token_embd.weight", sd["tok_emb.weight"]
    yield "position_embd.weight", sd["pos_emb.weight"]
    for i in range(a.n_layer):
        src, dst = f"blocks.{i}", f"blk.{i}"
        for part, gguf_name in (("norm1", "attn_norm"), ("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"),
                                ("norm2", "ffn_norm"), ("mlp.fc", "ffn_up"), ("mlp.proj", "ffn_down")):
            w = sd[f"{src}.{part}.weight"]
            yield f"{dst}.{gguf_name}.weight", w
            yield f"{dst}.{gguf_name}.bias", _bias(sd, f"{src}.{part}.bias", w.shape[0])
    yield "output_norm.weight", sd["norm_f.weight"]
    yield "output_norm.bias", _bias(sd, "norm_f.bias", sd["norm_f.weight"].shape[0])
    if not a.weight_tying:  # without an output tensor, llama.cpp uses the token embedding
        yield "output.weight", sd["head.weight"]


def rope_pairs_interleaved(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from tinyllm's split-halves RoPE layout (i pairs with i + d/2) to llama.cpp's
    consecutive pairs (2i, 2i + 1): new row 2i + s = old row s * d/2 + i. Works for weights and biases."""
    half = t.shape[0] // n_heads // 2
    return t.reshape(n_heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def ffn_tensors(sd: Tensors, a: ModelArgs, src: str, dst: str, part: str) -> Named:
    """The MLP of llama.cpp's Llama-like graphs: gate and up for SwiGLU (silu(gate) * up; tinyllm's fused matrix
    holds the gate first), up alone for ReLU² (arcee's relu(up)², apertus' xIELU stored as it), then down."""
    fc = sd[f"{src}.mlp.fc.{part}"]
    if a.mlp == "swiglu":
        gate, fc = fc.chunk(2, dim=0)
        yield f"{dst}.ffn_gate.{part}", gate
    yield f"{dst}.ffn_up.{part}", fc
    yield f"{dst}.ffn_down.{part}", sd[f"{src}.mlp.proj.{part}"]


def llama_tensors(sd: Tensors, a: ModelArgs) -> Named:
    """llama (SwiGLU: gate and up) and arcee (ReLU²: up alone), with llama's consecutive-pairs RoPE."""
    yield "token_embd.weight", sd["tok_emb.weight"]
    kv_dim = a.kv_heads * a.head_dim
    for i in range(a.n_layer):
        src, dst = f"blocks.{i}", f"blk.{i}"
        yield f"{dst}.attn_norm.weight", sd[f"{src}.norm1.weight"]
        for part in ("weight", "bias") if a.bias else ("weight",):
            # tinyllm fuses q, k and v into one matrix, in that order along the output dimension.
            q, k, v = sd[f"{src}.attn.qkv.{part}"].split([a.n_embd, kv_dim, kv_dim], dim=0)
            yield f"{dst}.attn_q.{part}", rope_pairs_interleaved(q, a.n_head)
            yield f"{dst}.attn_k.{part}", rope_pairs_interleaved(k, a.kv_heads)
            yield f"{dst}.attn_v.{part}", v
            yield f"{dst}.attn_output.{part}", sd[f"{src}.attn.proj.{part}"]
            yield from ffn_tensors(sd, a, src, dst, part)
        yield f"{dst}.ffn_norm.weight", sd[f"{src}.norm2.weight"]
    yield "output_norm.weight", sd["norm_f.weight"]
    if not a.weight_tying:
        yield "output.weight", sd["head.weight"]


def qk_norm_tensors(sd: Tensors, a: ModelArgs) -> Named:
    """apertus and qwen3: Llama's layer with q/k norm, RoPE turning tinyllm's split halves (NeoX, so no
    permutation), and an ungated ReLU² MLP (apertus) or SwiGLU (qwen3)."""
    yield "token_embd.weight", sd["tok_emb.weight"]
    kv_dim = a.kv_heads * a.head_dim
    for i in range(a.n_layer):
        src, dst = f"blocks.{i}", f"blk.{i}"
        yield f"{dst}.attn_norm.weight", sd[f"{src}.norm1.weight"]
        q, k, v = sd[f"{src}.attn.qkv.weight"].split([a.n_embd, kv_dim, kv_dim], dim=0)
        yield f"{dst}.attn_q.weight", q
        yield f"{dst}.attn_k.weight", k
        yield f"{dst}.attn_v.weight", v
        yield f"{dst}.attn_q_norm.weight", sd[f"{src}.attn.q_norm.weight"]
        yield f"{dst}.attn_k_norm.weight", sd[f"{src}.attn.k_norm.weight"]
        yield f"{dst}.attn_output.weight", sd[f"{src}.attn.proj.weight"]
        yield f"{dst}.ffn_norm.weight", sd[f"{src}.norm2.weight"]
        yield from ffn_tensors(sd, a, src, dst, "weight")
    yield "output_norm.weight", sd["norm_f.weight"]
    yield "output.weight", sd["head.weight"]  # apertus requires it, tied head or not


def _common_hparams(w: Any, a: ModelArgs) -> None:
    w.add_context_length(a.block_size)
    w.add_embedding_length(a.n_embd)
    w.add_block_count(a.n_layer)
    w.add_feed_forward_length(mlp_hidden_size(a))
    w.add_head_count(a.n_head)
    w.add_head_count_kv(a.kv_heads)


def gpt2_hparams(w: Any, a: ModelArgs) -> None:
    _common_hparams(w, a)
    w.add_layer_norm_eps(a.norm_eps)


def llama_hparams(w: Any, a: ModelArgs) -> None:
    _common_hparams(w, a)
    w.add_vocab_size(a.vocab_size)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_rope_freq_base(a.rope_theta)
    w.add_rope_dimension_count(a.head_dim)


# xIELU, the apertus graph's activation: x > 0: a_p x^2 + beta x, else (expm1(min(x, eps)) - x) a_n + beta x, with
# a_p = softplus(alpha_p) and a_n = beta + softplus(alpha_n) taken by llama.cpp from the values stored. Stored as
# below it is ReLU^2: softplus(ln(e - 1)) = 1, and softplus(-1000) underflows to exactly 0.
RELU2_AS_XIELU = {"xielu.alpha_p": float(np.log(np.e - 1)), "xielu.alpha_n": -1000.0, "xielu.beta": 0.0,
                  "xielu.eps": 0.0}


def apertus_hparams(w: Any, a: ModelArgs) -> None:
    llama_hparams(w, a)
    for key, value in RELU2_AS_XIELU.items():
        w.add_float32(key, value)


GELUS = ("gelu", "gelu_tanh")


def _qk_norm_needs(a: ModelArgs, mlp: str) -> list[tuple[str, Any, Any]]:
    need = mlp if a.mlp in ("relu2", "swiglu") else "relu2 or swiglu"
    return [("norm", a.norm, "rmsnorm"), ("mlp", a.mlp, need), *qk_norm_target_needs(a)]


def arch_key(a: ModelArgs) -> str:
    if a.pos_encoding == "rope" and a.qk_norm:
        return "rope+qk_norm+swiglu" if a.mlp == "swiglu" else "rope+qk_norm"
    if a.pos_encoding == "rope" and a.mlp == "relu2":
        return "rope+relu2"
    return a.pos_encoding
ARCHS: dict[str, Arch] = {
    # llama.cpp's gpt2 graph has one GELU, the tanh form: --mlp gelu_tanh exactly, --mlp gelu (erf) within ~1e-3.
    "learned": Arch("gpt2", lambda a: [("norm", a.norm, "layernorm"),
                                       ("mlp", "gelu or gelu_tanh" if a.mlp in GELUS else a.mlp, "gelu or gelu_tanh")],
                    gpt2_tensors, gpt2_hparams),
    "rope": Arch("llama", lambda a: [("norm", a.norm, "rmsnorm"), ("mlp", a.mlp, "swiglu")],
                 llama_tensors, llama_hparams),
    # RoPE with ReLU² and no q/k norm: llama's layer with an ungated relu(x)^2 MLP
    "rope+relu2": Arch("arcee", lambda a: [("norm", a.norm, "rmsnorm"), ("bias", a.bias, False)],
                       llama_tensors, llama_hparams),
    # RoPE with q/k norm: the default preset (ReLU²), or SwiGLU
    "rope+qk_norm": Arch("apertus", lambda a: _qk_norm_needs(a, "relu2"), qk_norm_tensors, apertus_hparams,
                         qk_norm=True),
    "rope+qk_norm+swiglu": Arch("qwen3", lambda a: _qk_norm_needs(a, "swiglu"), qk_norm_tensors, llama_hparams,
                                qk_norm=True),
}


def choose_arch(a: ModelArgs) -> Arch:
    """llama.cpp's architecture for these settings, or a UserError naming the first option that prevents it."""
    check_known_options(a, WHERE)
    arch = ARCHS.get(arch_key(a))
    if arch is None:
        raise UserError(f"cannot export {flag('pos_encoding', a.pos_encoding)} to {WHERE}: llama.cpp's gpt2 "
                        "(--pos_encoding learned) and llama (--pos_encoding rope) architectures both need positions")
    refuse_unmet(a, common_needs(a, arch.qk_norm) + arch.needs(a), WHERE, f"llama.cpp's {arch.name} architecture")
    return arch


# --- tokenizer --------------------------------------------------------------------------------------------

def rwkv_token(c: str) -> str:
    """A character as llama.cpp's rwkv vocabulary stores it: a backslash starts an escape, so it is doubled."""
    return "\\\\" if c == "\\" else c


def check_tokenizer(tokenizer: Any) -> None:
    if tokenizer.kind == "char":
        if "\n" not in tokenizer.chars:
            raise UserError("cannot export this char tokenizer to GGUF: its vocabulary has no newline, and "
                            "llama.cpp's one-character-per-token tokenizer (rwkv) requires one; train on text "
                            "with at least one line break")
        return
    data = json.loads(tokenizer.to_json())["tokenizers"]
    pre, model = data.get("pre_tokenizer") or {}, data.get("model") or {}
    gpt2_like = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                 and not pre.get("add_prefix_space", False) and data.get("normalizer") is None
                 and model.get("type") == "BPE")
    if not gpt2_like:
        raise UserError("cannot export this BPE tokenizer to GGUF: it is not the byte-level GPT-2 scheme tinyllm "
                        "trains (ByteLevel pre-tokenizer, no prefix space, no normaliser); retrain it")


def add_tokenizer(w: Any, tokenizer: Any) -> None:
    gguf = _gguf()
    check_tokenizer(tokenizer)
    if tokenizer.kind == "char":
        w.add_tokenizer_model("rwkv")
        w.add_token_list([rwkv_token(c) for c in tokenizer.chars])
        w.add_token_types([gguf.TokenType.NORMAL] * len(tokenizer.chars))
    else:
        data = json.loads(tokenizer.to_json())["tokenizers"]
        vocab = data["model"]["vocab"]
        tokens = [""] * len(vocab)
        for tok, i in vocab.items():
            tokens[i] = tok
        for added in data.get("added_tokens", []):  # <|endoftext|> (also in vocab, as tinyllm trains it)
            tokens[added["id"]] = added["content"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        eot = tokens.index(EOT_TOKEN)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL for i in range(len(tokens))])
        w.add_token_merges(merges)
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


def tokenizer_description(tokenizer: Any) -> str:
    if tokenizer.kind == "char":
        return f"{len(tokenizer.chars)} characters, one token each (llama.cpp tokenizer model rwkv)"
    return f"byte-level BPE of {tokenizer.vocab_size} tokens (llama.cpp tokenizer model gpt2, pre-tokenizer gpt-2)"


# --- tensors and metadata ---------------------------------------------------------------------------------

def tensor_type(name: str, t: torch.Tensor, dtype: str) -> str:
    """The type a tensor is stored in: 1-D tensors (norms, biases) and the position table stay f32."""
    if t.dim() < 2 or name == "position_embd.weight" or dtype == "f32":
        return "f32"
    if dtype == "q8_0" and t.shape[-1] % Q8_BLOCK:
        return "f16"
    return dtype


def add_tensors(w: Any, model: GPT, arch: Arch, dtype: str) -> dict[str, int]:
    """Add every tensor; returns how many were stored in each type."""
    gguf = _gguf()
    qtypes = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}
    counts: dict[str, int] = {}
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name, t in arch.tensors(sd, model.args):
        kind = tensor_type(name, t, dtype)
        data = gguf.quants.quantize(np.ascontiguousarray(t.numpy(), dtype=np.float32), qtypes[kind])
        w.add_tensor(name, data, raw_dtype=qtypes[kind] if kind == "q8_0" else None)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def add_metadata(w: Any, name: str, cfg: dict[str, Any], step: int, dtype: str, block_size: int) -> None:
    gguf = _gguf()
    w.add_type("model")
    w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # The run's sampling defaults. Both read temperature 0 as greedy, top_k 0 and top_p 1 as off; tinyllm's
    # repetition penalty covers the context window, which is at most block_size tokens.
    w.add_sampling_temp(float(cfg.get("temperature", 0.8)))
    w.add_sampling_top_k(int(cfg.get("top_k", 0)))
    w.add_sampling_top_p(float(cfg.get("top_p", 1.0)))
    w.add_sampling_penalty_repeat(float(cfg.get("repetition_penalty", 1.0)))
    w.add_sampling_penalty_last_n(block_size)
    w.add_string("tinyllm.version", __version__)
    w.add_uint64("tinyllm.step", int(step))
    w.add_string("tinyllm.config", json.dumps(cfg, sort_keys=True, ensure_ascii=False))


def describe(a: ModelArgs, tokenizer: Any, dtype: str) -> str:
    """One line: what this model exports as (or the UserError naming what prevents it)."""
    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(GGUF_DTYPES)}")
    arch = choose_arch(a)
    check_tokenizer(tokenizer)
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"--format gguf needs the `gguf` package; install the extra: {GGUF_HINT}")
    heads = f"{a.n_head} heads" + (f" ({a.kv_heads} key/value)" if a.kv_heads != a.n_head else "")
    return (f"llama.cpp architecture {arch.name}, {a.n_layer} layers, {heads}, context {a.block_size}, {dtype}; "
            f"tokenizer: {tokenizer_description(tokenizer)}")


# --- the export -------------------------------------------------------------------------------------------

def write_gguf(path: str | Path, model: GPT, tokenizer: Any, cfg: dict[str, Any], step: int, name: str,
               dtype: str = "f16") -> dict[str, int]:
    """Write the GGUF file for a loaded model to path; returns how many tensors were stored in each type."""
    gguf = _gguf()
    arch = choose_arch(model.args)
    w = gguf.GGUFWriter(Path(path), arch.name)
    add_metadata(w, name, cfg, step, dtype, model.args.block_size)
    arch.hparams(w, model.args)
    add_tokenizer(w, tokenizer)
    counts = add_tensors(w, model, arch, dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def _publish(tmp: Path, output: Path) -> None:
    """Give the file the mode a plain open() would have (mkstemp makes it private), fsync, rename into place."""
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, output)


def export_gguf(out_dir: str | Path, output: str | Path, which: str = "last", dtype: str = "f16",
                use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write the GGUF file for the run in out_dir; returns its path."""
    from tinyllm.generate import load_model

    output = Path(output)
    check_output(out_dir, output, "gguf", overwrite)
    _gguf()  # before loading anything: a missing package is the first thing to say
    model, tokenizer, ckpt = load_model(str(out_dir), which, "cpu", use_ema=use_ema)
    summary = describe(model.args, tokenizer, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.tmp-", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        counts = write_gguf(tmp, model, tokenizer, ckpt["config"], ckpt["step"], Path(out_dir).resolve().name, dtype)
        _publish(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    types = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    size = output.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    print(f"exported {out_dir} (step {ckpt['step']}) to {output} ({shown}): {summary}; tensors: {types}",
          file=sys.stderr)
    return output
