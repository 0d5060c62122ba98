"""Load a model to start from or to evaluate: a tinyllm run, one of its checkpoints, or a Hugging Face folder.

    load_source(PATH) -> Source(args, state_dict, tokenizer_json, description, ...)

PATH is one of
* a tinyllm run folder (its ckpt.pt) or a checkpoint file (run/ckpt_best.pt, a copy elsewhere): read by
  tinyllm.checkpoint.load_model_checkpoint (the one checkpoint loader, its weights checked), with the EMA
  weights where the run kept them;
* a Hugging Face model folder (config.json, model.safetensors or its shards, tokenizer.json) of class
  GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM: the reverse of tinyllm.export_hf, needing only
  `safetensors` and `tokenizers` (not `transformers`).

The HF config is mapped field by field onto ModelArgs; a field that tinyllm's model cannot compute exactly
(a rope scaling, a clipped activation, attention biases without MLP biases, another class, ...) is a UserError
naming it and what is supported, never an approximation. GPT-2: `activation_function` (gelu_new, GPT-2's own
tanh GELU, is `--mlp gelu_tanh`), the Conv1D layout (weights stored (in, out), so transposed here), the tied
head, `layer_norm_epsilon` (`--norm_eps`), `n_positions` (`--block_size`). A GPT-2 folder whose biases are all
exactly zero (what the exporter writes for a `--no-bias` run) imports as `--no-bias`, which computes the same,
so that import(export(run)) gives the run's own settings back. Llama: grouped-query heads, `rope_theta`,
`rms_norm_eps`, a tied or untied head, biases only as a pair (attention_bias = mlp_bias, as tinyllm's one
`--bias`), `hidden_act` silu (`--mlp swiglu`) or relu with gate_proj = up_proj (`--mlp relu2`, the form the
exporter writes: relu(h) * h = relu(h)²; with two different matrices it would be a ReGLU, which tinyllm lacks).
Qwen3: Llama's layer with `--qk_norm`, no biases, and `rms_norm_eps` 1e-5 (tinyllm's q/k norms use 1e-5, Qwen 3's
the eps of every norm: the released Qwen 3 models, at 1e-6 and with a head_dim of their own, are refused).

Weights stored only as a pickle (pytorch_model.bin) are read with `torch.load(weights_only=True)`, which
refuses anything but plain tensors; a file that needs more is refused with how to convert it.

The tokenizer.json must be a byte-level BPE (GPT-2's, Llama 3's, SmolLM's, ...; see tinyllm.tokenizer) or the
one-token-per-character vocabulary the exporter writes for a char run; it becomes tinyllm's tokenizer JSON.
The end-of-text token is the folder's eos token (tokenizer_config.json, else config.json's eos_token_id), else
<|endoftext|> where the vocabulary has it, else none.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tinyllm.checkpoint import CKPT_NAMES, load_model_checkpoint
from tinyllm.errors import UserError
from tinyllm.export_common import GATED_ACTIVATIONS
from tinyllm.model import GPT, QK_NORM_EPS, ModelArgs, mlp_hidden_size
from tinyllm.tokenizer import EOT_TOKEN, BPETokenizer, CharTokenizer, tokenizer_from_json

IMPORT_HINT = 'pip install -e ".[export]"'
SUPPORTED_CLASSES = "GPT2LMHeadModel, LlamaForCausalLM and Qwen3ForCausalLM"
WHAT_PATH_IS = ("a tinyllm run folder (holding ckpt.pt), a tinyllm checkpoint file, or a Hugging Face model folder "
                "(config.json, model.safetensors, tokenizer.json)")
# Fields that affect only training, never a model's logits: an import leaves them at their defaults (the user's
# own settings decide them), and they are not compared when checking that an import reproduces a run.
TRAINING_ONLY_FIELDS = ("dropout", "attention_dropout", "layerdrop", "grad_checkpointing")

Tensors = dict[str, torch.Tensor]


@dataclass
class Source:
    """A model read from a PATH: everything needed to build it, its tokenizer, and where it came from."""

    args: ModelArgs
    state_dict: Tensors  # tinyllm's layout and names, float32 (a tied head: both keys, one tensor)
    tokenizer_json: str  # tinyllm's tokenizer JSON (tinyllm.tokenizer.tokenizer_from_json reads it)
    description: str  # one line for messages and logs, e.g. "Hugging Face GPT2LMHeadModel in /m/gpt2"
    kind: str  # "tinyllm" or "hf"
    path: str  # the checkpoint file or the HF folder that was read (absolute)
    architecture: str = "tinyllm"  # the HF class, for kind "hf"
    step: int | None = None  # the checkpoint's step, for kind "tinyllm"
    run_config: dict[str, Any] | None = None  # the checkpoint's resolved config, for kind "tinyllm"
    notes: list[str] = field(default_factory=list)  # how the import mapped something worth saying

    def origin(self) -> dict[str, Any]:
        """What to record about where a run started from (JSON-serialisable)."""
        out: dict[str, Any] = {"kind": self.kind, "path": self.path, "description": self.description}
        if self.kind == "hf":
            out["architecture"] = self.architecture
        if self.step is not None:
            out["step"] = self.step
        return out


# --- the entry points ------------------------------------------------------------------------------------

def load_source(path: str | Path, flag: str = "--init_from", use_ema: bool = True) -> Source:
    """Read PATH (see the module docstring); a UserError naming `flag` and PATH when it is not usable."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} {p}: no such file or folder; pass {WHAT_PATH_IS}")
    if p.is_file() and (p.suffix in (".safetensors", ".json") or p.name.startswith("pytorch_model")):
        raise UserError(f"{flag} {p}: pass the Hugging Face model folder that holds this file, not the file")
    if p.is_file():
        return _tinyllm_source(p, flag, use_ema)
    if (p / CKPT_NAMES["last"]).is_file():
        return _tinyllm_source(p / CKPT_NAMES["last"], flag, use_ema)
    if is_hf_folder(p):
        return _hf_source(p, flag)
    if (p / "config.json").is_file():
        try:
            json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{flag} {p}: its config.json is not readable JSON ({e}); repair or replace it "
                            "(a Hugging Face folder's config.json names its model class)") from None
    if (p / "config.json").is_file() or (p / "metrics.jsonl").is_file():
        raise UserError(f"{flag} {p}: this tinyllm run folder has no checkpoint ({CKPT_NAMES['last']}); train it "
                        "first, or pass one of its checkpoint files")
    raise UserError(f"{flag} {p}: this folder is neither a tinyllm run (no {CKPT_NAMES['last']}) nor a Hugging "
                    f"Face model (no config.json naming a model class); pass {WHAT_PATH_IS}")


def build_model(src: Source, device: str | torch.device = "cpu") -> GPT:
    """The GPT holding the source's weights, in eval mode, in float32."""
    model = GPT(src.args)
    model.load_state_dict(src.state_dict)
    return model.to(device).eval()


def load_model_and_tokenizer(path: str | Path, flag: str = "--model", device: str | torch.device = "cpu",
                             use_ema: bool = True) -> tuple[GPT, Any, Source]:
    """(model in eval mode, tokenizer, source) for PATH: what evaluation and generation need."""
    src = load_source(path, flag, use_ema)
    return build_model(src, device), tokenizer_from_json(src.tokenizer_json), src


def is_hf_folder(p: Path) -> bool:
    """A folder whose config.json names a transformers model (tinyllm's own config.json does not)."""
    cfg = p / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def model_args_equal(a: ModelArgs, b: ModelArgs) -> bool:
    """Whether two ModelArgs build models that compute the same (training-only fields are ignored)."""
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(ModelArgs)
               if f.name not in TRAINING_ONLY_FIELDS)


# --- a tinyllm checkpoint --------------------------------------------------------------------------------

def _tinyllm_source(ckpt_path: Path, flag: str, use_ema: bool) -> Source:
    from tinyllm.generate import model_from_checkpoint

    try:
        ckpt = load_model_checkpoint(ckpt_path)
        model, _ = model_from_checkpoint(ckpt, "cpu", use_ema)
    except UserError as e:
        raise UserError(f"{flag} {ckpt_path}: {e}") from None
    ema = use_ema and "ema" in ckpt
    path = ckpt_path.resolve()
    return Source(args=model.args, state_dict=model.state_dict(), tokenizer_json=ckpt["tokenizer"],
                  description=f"tinyllm run {path.parent} ({path.name}, step {ckpt['step']}"
                              f"{', EMA weights' if ema else ''})",
                  kind="tinyllm", path=str(path), step=int(ckpt["step"]), run_config=dict(ckpt["config"]))


# --- a Hugging Face folder: config -----------------------------------------------------------------------

class _Config:
    """config.json with a default per field (transformers' own) and errors that name the field."""

    def __init__(self, data: dict[str, Any], where: str, arch: str):
        self.data, self.where, self.arch = data, where, arch

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def need(self, key: str, default: Any = None, kind: type | tuple[type, ...] = int) -> Any:
        value = self.get(key, default)
        if value is None:
            raise UserError(f"{self.where}: config.json lacks `{key}`, which {self.arch} needs")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UserError(f"{self.where}: config.json has `{key}`: {json.dumps(value)}, which is not a number")
        return value

    def refuse(self, key: str, value: Any, supported: str) -> UserError:
        return UserError(f"{self.where}: config.json has `{key}`: {json.dumps(value)}, which tinyllm's model cannot "
                         f"compute ({self.arch}); supported: {supported}")

    def expect(self, key: str, default: Any, supported: Any) -> None:
        value = self.get(key, default)
        if value != supported:
            raise self.refuse(key, value, json.dumps(supported))


# transformers' activation names -> tinyllm's --mlp. The tanh forms differ from each other by float rounding
# (below 3e-7); the exact GELU is F.gelu. Others (quick_gelu, relu, gelu_10, ...) have no tinyllm MLP.
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
                    "relu2": "relu2"}


def _common_checks(c: _Config) -> None:
    if c.get("quantization_config") is not None:
        raise c.refuse("quantization_config", c.get("quantization_config"), "unquantized weights (save the model "
                       "in float32, float16 or bfloat16)")


def gpt2_args(c: _Config) -> ModelArgs:
    _common_checks(c)
    act = c.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise c.refuse("activation_function", act, ", ".join(GPT2_ACTIVATIONS))
    c.expect("scale_attn_weights", True, True)
    c.expect("scale_attn_by_inverse_layer_idx", False, False)
    c.expect("add_cross_attention", False, False)
    n_embd = c.need("n_embd", 768)
    args = ModelArgs(
        vocab_size=c.need("vocab_size", 50257), n_layer=c.need("n_layer", 12), n_head=c.need("n_head", 12),
        n_embd=n_embd, block_size=c.need("n_positions", 1024), bias=True,
        weight_tying=bool(c.get("tie_word_embeddings", True)), mlp=GPT2_ACTIVATIONS[act],
        norm_eps=float(c.need("layer_norm_epsilon", 1e-5, (int, float))),
    )
    hidden = c.need("n_inner", 4 * n_embd)
    args.mlp_hidden = 0 if hidden == mlp_hidden_size(args) else hidden
    return args


def _rope_theta(c: _Config) -> float:
    """rope_theta from transformers 4's `rope_theta` + `rope_scaling` or 5's `rope_parameters`: only the plain
    rotation (rope_type default) is tinyllm's."""
    theta = c.get("rope_theta", 10000.0)
    for key in ("rope_scaling", "rope_parameters"):
        spec = c.get(key)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise c.refuse(key, spec, "null, or the default rope_type")
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise c.refuse(key, spec, "the default rope_type (no scaling: linear, dynamic, yarn, llama3 and "
                           "longrope are not implemented)")
        if spec.get("partial_rotary_factor", 1.0) != 1.0:
            raise c.refuse(key, spec, "partial_rotary_factor 1.0")
        theta = spec.get("rope_theta", theta)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise c.refuse("rope_theta", theta, "a positive number")
    return float(theta)


# transformers' hidden_act of a gated MLP -> tinyllm's --mlp (relu: only with gate_proj = up_proj, see llama_state)
GATED_MLPS = {act: mlp for mlp, act in GATED_ACTIVATIONS.items()}


def llama_args(c: _Config) -> ModelArgs:
    _common_checks(c)
    act = c.get("hidden_act", "silu")
    if act not in GATED_MLPS:
        raise c.refuse("hidden_act", act, "silu, or relu with gate_proj = up_proj")
    attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise c.refuse("attention_bias", attn_bias, f"the same value as mlp_bias ({json.dumps(mlp_bias)}): tinyllm "
                       "has biases in every linear layer or in none")
    n_embd, n_head = c.need("hidden_size", 4096), c.need("num_attention_heads", 32)
    if n_embd % n_head:
        raise c.refuse("num_attention_heads", n_head, f"a divisor of hidden_size ({n_embd})")
    head_dim = c.get("head_dim", n_embd // n_head)
    if head_dim != n_embd // n_head:
        raise c.refuse("head_dim", head_dim, f"hidden_size / num_attention_heads ({n_embd // n_head})")
    if head_dim % 2:
        raise c.refuse("head_dim", head_dim, "an even head size (RoPE turns pairs of dimensions)")
    n_kv = c.need("num_key_value_heads", n_head)
    if n_kv < 1 or n_head % n_kv:
        raise c.refuse("num_key_value_heads", n_kv, f"a divisor of num_attention_heads ({n_head})")
    args = ModelArgs(
        vocab_size=c.need("vocab_size", 32000), n_layer=c.need("num_hidden_layers", 32), n_head=n_head,
        n_embd=n_embd, block_size=c.need("max_position_embeddings", 2048), bias=attn_bias,
        weight_tying=bool(c.get("tie_word_embeddings", False)), mlp=GATED_MLPS[act], pos_encoding="rope",
        rope_theta=_rope_theta(c), norm="rmsnorm", n_kv_head=0 if n_kv == n_head else n_kv,
        norm_eps=float(c.need("rms_norm_eps", 1e-6, (int, float))),
    )
    hidden = c.need("intermediate_size", 11008)
    args.mlp_hidden = 0 if hidden == mlp_hidden_size(args) else hidden
    return args


def qwen3_args(c: _Config) -> ModelArgs:
    c.expect("attention_bias", False, False)  # Qwen 3's MLP has no biases, and tinyllm's --bias is all or none
    c.expect("use_sliding_window", False, False)
    eps = c.get("rms_norm_eps", 1e-6)
    if eps != QK_NORM_EPS:
        raise c.refuse("rms_norm_eps", eps, f"{QK_NORM_EPS} (Qwen 3's q/k norms use it too, and tinyllm's always "
                       f"{QK_NORM_EPS})")
    args = llama_args(c)
    args.qk_norm = True
    return args


# --- a Hugging Face folder: weights ----------------------------------------------------------------------

class _Weights:
    """The folder's tensors by name; each mapped tensor is taken out, so what is left over is known."""

    def __init__(self, tensors: Tensors, where: str, prefix: str):
        # A GPT2LMHeadModel saved whole has "transformer.h.0...", a GPT2Model (as the hub's gpt2) "h.0...".
        self.t = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
        self.where = where

    def has(self, name: str) -> bool:
        return name in self.t

    def take(self, name: str) -> torch.Tensor:
        if name not in self.t:
            raise UserError(f"{self.where}: the weights lack the tensor `{name}`; the folder is incomplete or not "
                            "the model its config.json describes")
        t = self.t.pop(name)
        return t.float() if t.is_floating_point() else t

    def finish(self, ignore: tuple[str, ...]) -> None:
        left = [k for k in self.t if not k.endswith(ignore)]
        if left:
            raise UserError(f"{self.where}: the weights hold tensors the model does not use ({', '.join(left[:5])}"
                            f"{', ...' if len(left) > 5 else ''}); the folder is not a plain model of its class")


def gpt2_state(w: _Weights, a: ModelArgs) -> Tensors:
    """GPT2LMHeadModel's tensors -> tinyllm's (Conv1D stores (in, out): transposed to Linear's (out, in))."""
    sd: Tensors = {"tok_emb.weight": w.take("wte.weight"), "pos_emb.weight": w.take("wpe.weight")}

    def conv(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = w.take(f"{src}.weight").t().contiguous()
        sd[f"{dst}.bias"] = w.take(f"{src}.bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = w.take(f"{src}.weight"), w.take(f"{src}.bias")

    for i in range(a.n_layer):
        src, dst = f"h.{i}", f"blocks.{i}"
        norm(f"{dst}.norm1", f"{src}.ln_1")
        conv(f"{dst}.attn.qkv", f"{src}.attn.c_attn")
        conv(f"{dst}.attn.proj", f"{src}.attn.c_proj")
        norm(f"{dst}.norm2", f"{src}.ln_2")
        conv(f"{dst}.mlp.fc", f"{src}.mlp.c_fc")
        conv(f"{dst}.mlp.proj", f"{src}.mlp.c_proj")
    norm("norm_f", "ln_f")
    _head(w, a, sd)
    # The causal-mask buffers that older GPT-2 files carry (h.N.attn.bias, h.N.attn.masked_bias) hold no weights.
    w.finish(ignore=(".attn.bias", ".attn.masked_bias"))
    return sd


def llama_state(w: _Weights, a: ModelArgs) -> Tensors:
    """LlamaForCausalLM's (and Qwen3ForCausalLM's) tensors -> tinyllm's: q, k, v fused into one matrix (in that
    order), gate and up too (or, for relu2, the one matrix they both are)."""
    sd: Tensors = {"tok_emb.weight": w.take("embed_tokens.weight")}
    parts = ("weight", "bias") if a.bias else ("weight",)
    for i in range(a.n_layer):
        src, dst = f"layers.{i}", f"blocks.{i}"
        sd[f"{dst}.norm1.weight"] = w.take(f"{src}.input_layernorm.weight")
        sd[f"{dst}.norm2.weight"] = w.take(f"{src}.post_attention_layernorm.weight")
        for part in parts:
            sd[f"{dst}.attn.qkv.{part}"] = torch.cat([w.take(f"{src}.self_attn.{n}_proj.{part}") for n in "qkv"])
            sd[f"{dst}.attn.proj.{part}"] = w.take(f"{src}.self_attn.o_proj.{part}")
            gate, up = (w.take(f"{src}.mlp.{n}_proj.{part}") for n in ("gate", "up"))
            if a.mlp == "relu2" and not torch.equal(gate, up):
                raise UserError(f"{w.where}: hidden_act relu with gate_proj and up_proj different (layer {i}) is a "
                                "ReGLU MLP, which tinyllm's model cannot compute; relu with the two equal is "
                                "--mlp relu2")
            sd[f"{dst}.mlp.fc.{part}"] = gate if a.mlp == "relu2" else torch.cat([gate, up])
            sd[f"{dst}.mlp.proj.{part}"] = w.take(f"{src}.mlp.down_proj.{part}")
        if a.qk_norm:
            for n in ("q_norm", "k_norm"):
                sd[f"{dst}.attn.{n}.weight"] = w.take(f"{src}.self_attn.{n}.weight")
    sd["norm_f.weight"] = w.take("norm.weight")
    _head(w, a, sd)
    w.finish(ignore=(".rotary_emb.inv_freq",))  # a buffer some older files carry, recomputed from rope_theta
    return sd


def _head(w: _Weights, a: ModelArgs, sd: Tensors) -> None:
    if a.weight_tying:
        if w.has("lm_head.weight"):  # a tied head saved anyway: transformers ignores it, and so do we
            w.take("lm_head.weight")
        sd["head.weight"] = sd["tok_emb.weight"]
    else:
        sd["head.weight"] = w.take("lm_head.weight")


def _drop_zero_biases(a: ModelArgs, sd: Tensors) -> bool:
    """GPT-2 always has biases; where every one is exactly zero (a --no-bias run's export) drop them all and
    build the model without, which computes the same. Returns whether it did."""
    biases = [k for k in sd if k.endswith(".bias")]
    if not biases or any(bool(sd[k].any()) for k in biases):
        return False
    for k in biases:
        del sd[k]
    a.bias = False
    return True


@dataclass(frozen=True)
class _Arch:
    args: Any  # (_Config) -> ModelArgs
    state: Any  # (_Weights, ModelArgs) -> Tensors
    prefix: str  # the base model's name inside the LM class, stripped from tensor names


ARCHS = {
    "GPT2LMHeadModel": _Arch(gpt2_args, gpt2_state, "transformer."),
    "LlamaForCausalLM": _Arch(llama_args, llama_state, "model."),
    "Qwen3ForCausalLM": _Arch(qwen3_args, llama_state, "model."),
}
MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _safetensors_load(path: Path, where: str) -> Tensors:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{where}: reading model.safetensors needs the `safetensors` package; install the extra: "
                        f"{IMPORT_HINT}") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{where}: {path.name} is corrupt or truncated ({str(e)[:200]}); download it again") from None


def _pickle_load(path: Path, where: str) -> Tensors:
    """A pytorch_model.bin, read only as plain tensors (weights_only=True: nothing in it can run code)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{where}: refusing to load {path.name}: it holds objects that could run code when "
                        "unpickled. Convert it to safetensors where you trust it, e.g. with transformers: "
                        "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, "
                        "safe_serialization=True)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{where}: {path.name} is corrupt or truncated ({str(e)[:200]}); download it again") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{where}: {path.name} is not a state dict of tensors; save the model with "
                        "save_pretrained(folder, safe_serialization=True)")
    return data


def read_hf_weights(folder: Path, where: str) -> tuple[Tensors, str]:
    """Every tensor of the folder and the file(s) they came from: model.safetensors, its shards (with
    model.safetensors.index.json), or else pytorch_model.bin (or its shards)."""
    for single, index, load in (("model.safetensors", "model.safetensors.index.json", _safetensors_load),
                                ("pytorch_model.bin", "pytorch_model.bin.index.json", _pickle_load)):
        if (folder / single).is_file():
            return load(folder / single, where), single
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise UserError(f"{where}: {index} is malformed; download it again") from None
            tensors: Tensors = {}
            for name in files:
                if not (folder / name).is_file():
                    raise UserError(f"{where}: {index} names {name}, which is missing; download it again")
                tensors.update(load(folder / name, where))
            return tensors, f"{index} ({len(files)} files)"
    raise UserError(f"{where}: no weights (model.safetensors, or pytorch_model.bin); download the model's weights "
                    "into the folder")


# --- a Hugging Face folder: tokenizer --------------------------------------------------------------------

def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eot_token(folder: Path, hf_tok: Any, config: dict[str, Any]) -> str | None:
    """The end-of-text token: the folder's eos token, else <|endoftext|> where the vocabulary has it, else None."""
    candidates: list[str | None] = []
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            candidates.append(_token_text(json.loads(tc.read_text(encoding="utf-8")).get("eos_token")))
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if isinstance(eos, int) and not isinstance(eos, bool):
        candidates.append(hf_tok.id_to_token(eos))
    candidates.append(EOT_TOKEN)
    return next((t for t in candidates if t is not None and hf_tok.token_to_id(t) is not None), None)


def _char_vocabulary(data: dict[str, Any]) -> list[str] | None:
    """The characters of a tokenizer.json written by tinyllm's exporter for a char run, else None."""
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    vocab = model.get("vocab")
    if (model.get("type") != "WordLevel" or data.get("normalizer") is not None or not isinstance(vocab, dict)
            or pre.get("type") != "Split" or pre.get("pattern") != {"Regex": r"[\s\S]"}
            or (data.get("decoder") or {}).get("type") != "Fuse"):
        return None
    chars = sorted(vocab, key=vocab.get)
    if not all(len(c) == 1 for c in chars) or [vocab[c] for c in chars] != list(range(len(chars))):
        return None
    return chars


def hf_tokenizer_json(folder: Path, config: dict[str, Any], where: str) -> str:
    """tinyllm's tokenizer JSON for the folder's tokenizer.json (see the module docstring)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{where}: no tokenizer.json; save the model's fast tokenizer into the folder (with "
                        "transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder))")
    try:
        import tokenizers as tk
    except ImportError:
        raise UserError(f"{where}: reading tokenizer.json needs the `tokenizers` package; install the extra: "
                        f"{IMPORT_HINT}") from None
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        hf_tok = tk.Tokenizer.from_str(text)
    except Exception as e:  # the Rust side raises plain Exception for any malformed field
        raise UserError(f"{where}: tokenizer.json is malformed ({str(e)[:200]}); download it again") from None
    chars = _char_vocabulary(data)
    if chars is not None:
        return CharTokenizer(chars).to_json()
    model_type = (data.get("model") or {}).get("type")
    decoder = (data.get("decoder") or {}).get("type")
    if model_type != "BPE" or decoder != "ByteLevel":
        raise UserError(f"{where}: tokenizer.json is a {model_type} model with a {decoder} decoder; tinyllm reads "
                        "byte-level BPE tokenizers (as GPT-2's, Llama 3's or SmolLM's: model BPE, decoder "
                        "ByteLevel), not SentencePiece-style ones (as Llama 2's), WordPiece or Unigram")
    try:
        tok = BPETokenizer(hf_tok, _eot_token(folder, hf_tok, config))
    except UserError as e:
        raise UserError(f"{where}: tokenizer.json cannot be tinyllm's: {str(e).removesuffix('; retrain it')}; "
                        "tinyllm reads byte-level BPE tokenizers (as GPT-2's)") from None
    return tok.to_json()


# --- a Hugging Face folder: all of it ----------------------------------------------------------------------

def hf_architecture(config: dict[str, Any], where: str) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        if len(archs) > 1 or archs[0] not in ARCHS:
            raise UserError(f"{where}: config.json names the class {', '.join(map(str, archs))}; tinyllm imports "
                            f"{SUPPORTED_CLASSES}")
        return archs[0]
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{where}: config.json has model_type {json.dumps(model_type)} and names no class; tinyllm "
                        f"imports {SUPPORTED_CLASSES} (model_type gpt2, llama or qwen3)")
    return MODEL_TYPES[model_type]


def _hf_source(folder: Path, flag: str) -> Source:
    folder = folder.resolve()
    where = f"{flag} {folder}"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: config.json is not valid JSON ({e}); download it again") from None
    arch_name = hf_architecture(config, where)
    arch = ARCHS[arch_name]
    args = arch.args(_Config(config, where, arch_name))
    try:
        args.check()
    except ValueError as e:
        raise UserError(f"{where}: config.json describes a model tinyllm cannot build ({e})") from None
    tokenizer_json = hf_tokenizer_json(folder, config, where)  # before the weights: it is the cheaper check
    vocab = tokenizer_from_json(tokenizer_json).vocab_size
    if vocab > args.vocab_size:
        raise UserError(f"{where}: tokenizer.json has {vocab} tokens but the model only {args.vocab_size} "
                        "(config.json's vocab_size); the two do not belong together")
    tensors, weights_file = read_hf_weights(folder, where)
    sd = arch.state(_Weights(tensors, where, arch.prefix), args)
    del tensors
    notes = []
    if arch_name == "GPT2LMHeadModel" and _drop_zero_biases(args, sd):
        notes.append("every bias is zero: imported without biases (--no-bias), which computes the same")
    _check_shapes(args, sd, where)
    return Source(args=args, state_dict=sd, tokenizer_json=tokenizer_json,
                  description=f"Hugging Face {arch_name} in {folder} ({weights_file})", kind="hf", path=str(folder),
                  architecture=arch_name, notes=notes)


def _check_shapes(args: ModelArgs, sd: Tensors, where: str) -> None:
    """Every tensor the model has, with the shape it has (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in GPT(args).state_dict().items()}
    for k, shape in want.items():
        have = tuple(sd[k].shape)
        if have != shape:
            raise UserError(f"{where}: a weight has shape {list(have)} where config.json implies {list(shape)} "
                            f"(tinyllm's {k}); the weights and config.json do not belong together")
    extra = set(sd) - set(want)
    assert not extra, extra  # the mapping produces only tinyllm names
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{where}: the weights hold NaN or infinite values (tinyllm's {bad[0]}); the file is "
                        "damaged")
