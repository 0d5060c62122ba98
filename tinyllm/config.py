"""Every setting of tinyllm in one dataclass.

Each field carries its help text, group, allowed choices and lower bound in its metadata. The argparse
flags, JSON loading and saving, validation and the GUI form are all derived from this one declaration,
so a setting is never declared twice and never accepted and then ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tinyllm.errors import UserError

GROUPS = ("data", "model", "training", "optimizer", "schedule", "eval", "generation", "system")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "tiny_char_gpt.json"
# torch.compile modes that capture CUDA graphs (torch._inductor.list_mode_options(): triton.cudagraphs)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def opt(
    default: Any,
    help: str,
    group: str,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    min_exclusive: bool = False,
    max: float | None = None,
    max_exclusive: bool = False,
    shape: bool = False,
    invocation: bool = False,
) -> Any:
    """A config field with its documentation attached.

    `shape=True` marks settings that define the model's tensors or vocabulary: on resume they must match
    the checkpoint, because silently ignoring or changing them would load the wrong weights.
    `invocation=True` marks settings of one launch rather than of the run (device, DDP, ...): a resumed run
    does not inherit them from its checkpoint.
    """
    assert group in GROUPS, group
    meta = {"help": help, "group": group, "choices": choices, "min": min, "min_exclusive": min_exclusive,
            "max": max, "max_exclusive": max_exclusive, "shape": shape, "invocation": invocation}
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # data
    data_path: str = opt("data/tiny_corpus.txt", "UTF-8 text to train on: a file; or a folder (every .txt and .md "
                         "file under it, recursively, in sorted path order) or a quoted glob pattern such as "
                         "'notes/**/*.txt', whose files are documents: each holds out its own last --val_fraction, "
                         "and they are joined by the end-of-text token (bpe) or a blank line (char).", "data")
    val_fraction: float = opt(0.1, "Fraction of the text, taken from its end, held out for validation.",
                              "data", min=0.0, max=0.5)
    out_dir: str = opt("out/tiny_char_gpt", "Folder for checkpoints, metrics, logs and the tokenizer.", "data")
    tokenizer: str = opt("char", "char (one token per character) or bpe (byte-level BPE trained on the training "
                         "text; needs the `bpe` extra).", "data", choices=("char", "bpe"), shape=True)
    bpe_vocab_size: int = opt(4096, "Vocabulary size of the BPE tokenizer (with --tokenizer bpe): at least 257 "
                              "(256 bytes + <|endoftext|>).", "data", min=257, shape=True)
    tokenizer_path: str = opt("", "Reuse this tokenizer.json (from an earlier run) instead of building a "
                              "tokenizer from --data_path; empty = build one.", "data", shape=True)
    memmap_dataset: bool = opt(False, "Tokenise once into out_dir/tokens.bin (streaming, reused while its sidecar "
                               "matches) and read batches from it with np.memmap, instead of holding the tokens "
                               "in memory.", "data")
    dataloader_workers: int = opt(0, "Build training batches in N DataLoader worker processes; 0 = in the "
                                  "training process.", "data", min=0)

    # model
    init_from: str = opt("", "Start from existing weights: a tinyllm run folder (its ckpt.pt), a checkpoint file, or a "
                         "Hugging Face GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder (config.json, "
                         "model.safetensors, tokenizer.json). The model's shape settings and tokenizer come from it; "
                         "the new run starts at step 0 with a fresh optimizer and schedule. Empty = random "
                         "initialisation.", "model")
    n_layer: int = opt(4, "Number of transformer blocks.", "model", min=1, shape=True)
    n_head: int = opt(4, "Attention heads per block; must divide n_embd.", "model", min=1, shape=True)
    n_embd: int = opt(128, "Width of the residual stream (embedding size).", "model", min=1, shape=True)
    block_size: int = opt(128, "Context length in tokens.", "model", min=1, shape=True)
    dropout: float = opt(0.0, "Dropout probability in attention and MLP outputs.", "model", min=0.0, max=0.9)
    attention_dropout: bool = opt(True, "Apply --dropout to the attention weights as well; off: only to the "
                                  "embeddings and the attention and MLP outputs, which keeps the fused attention "
                                  "kernel (attention-weight dropout makes a CPU step ~1.7x slower).", "model")
    bias: bool = opt(True, "Use biases in linear layers and LayerNorms.", "model", shape=True)
    weight_tying: bool = opt(False, "The output head shares the token-embedding matrix.", "model", shape=True)
    mlp: str = opt("gelu", "MLP type: gelu (4x, exact erf GELU), gelu_tanh (4x, GELU's tanh approximation: "
                   "GPT-2's own), swiglu or relu2 (squared ReLU).", "model",
                   choices=("gelu", "gelu_tanh", "swiglu", "relu2"), shape=True)
    mlp_hidden: int = opt(0, "MLP hidden size; 0 = auto: 4 x n_embd, or for swiglu 8/3 x n_embd rounded up to "
                          "a multiple of 64.", "model", min=0, shape=True)
    pos_encoding: str = opt("learned", "Positions: learned absolute embeddings, rope (rotary, on q and k) or "
                            "none.", "model", choices=("learned", "rope", "none"), shape=True)
    rope_theta: float = opt(10000.0, "RoPE base: dimension pair i of a head turns by position x theta^(-2i/head_size).",
                            "model", min=0.0, min_exclusive=True, shape=True)
    norm: str = opt("layernorm", "Normalisation layer: layernorm or rmsnorm.", "model",
                    choices=("layernorm", "rmsnorm"), shape=True)
    norm_eps: float = opt(1e-5, "Epsilon of the norm layers (added to the variance before the square root).",
                          "model", min=0.0, min_exclusive=True, shape=True)
    qk_norm: bool = opt(False, "RMS-normalise q and k per head before attention.", "model", shape=True)
    parallel_block: bool = opt(False, "x + attn(norm(x)) + mlp(norm(x)) with one shared norm (GPT-J/PaLM).",
                               "model", shape=True)
    sliding_window: int = opt(0, "Each position attends to at most the last N positions (itself included); "
                              "0 = off (full causal attention).", "model", min=0, shape=True)
    n_kv_head: int = opt(0, "Key/value heads (grouped-query attention); must divide n_head; 0 = n_head.",
                         "model", min=0, shape=True)
    logit_softcap: float = opt(0.0, "Soft-cap the output logits to (-c, c) with c * tanh(logits / c); 0 = off.",
                               "model", min=0.0, shape=True)
    layerdrop: float = opt(0.0, "Training only: skip each block with this probability per step (kept blocks' "
                           "residual branches scaled by 1 / (1 - p)).", "model", min=0.0, max=0.9)
    grad_checkpointing: bool = opt(False, "Recompute each block's activations in backward instead of storing "
                                   "them: less memory, same gradients, more compute.", "model")

    # training
    batch_size: int = opt(32, "Sequences per optimizer step.", "training", min=1)
    max_steps: int = opt(1200, "Optimizer steps to train for (the run's total, across resumes); 0 = train for "
                         "--max_time seconds, with the schedule laid over that time.", "training", min=0)
    max_time: float = opt(0.0, "Stop cleanly (and save) after this many seconds of wall clock in this session; "
                          "0 = no limit. With --max_steps 0: the run's whole length in seconds of training "
                          "(evaluations, samples, saves and a --compile run's first step are off the clock), "
                          "across resumes.",
                          "training", min=0.0)
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this value; 0 disables clipping.",
                           "training", min=0.0)
    seed: int = opt(1337, "Random seed for weights, batches and sampling.", "training", min=0, max=2**32 - 1)
    grad_accum_steps: int = opt(1, "Micro-batches per optimizer step; effective batch = batch_size x this x "
                                "world size.", "training", min=1)
    amp: bool = opt(False, "Mixed precision: bf16 (CUDA with bf16, CPUs with native bf16), fp16 + loss scaling "
                    "(other CUDA GPUs); fp32 with a warning where it would be slower.", "training")
    compile: bool = opt(False, "torch.compile the model (falls back to eager with a warning if it fails); the "
                        "first step, where it compiles, is not counted as training time.", "training")
    compile_backend: str = opt("inductor", "torch.compile backend: inductor, aot_eager, eager or any registered "
                               "backend name.", "training")
    compile_mode: str = opt("default", "torch.compile mode (inductor): default; reduce-overhead replays the "
                            "forward and backward as CUDA graphs, one launch each, for small models that a GPU "
                            "runs faster than Python can launch their kernels (CUDA only; not with "
                            "--grad_accum_steps > 1 or DDP); max-autotune and max-autotune-no-cudagraphs also "
                            "search kernel configurations (a longer compile).", "training",
                            choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    tf32: bool = opt(False, "On CUDA GPUs with TF32 (Ampere and newer), fp32 matmuls run on the tensor cores "
                     "with a 10-bit mantissa: several times the fp32 speed, for runs without --amp. No effect "
                     "elsewhere.", "training")
    label_smoothing: float = opt(0.0, "Label smoothing of the training cross-entropy.", "training", min=0.0,
                                 max=0.99)
    z_loss: float = opt(0.0, "Coefficient of the z-loss, coef x mean(logsumexp(logits)^2), which keeps the "
                        "softmax normaliser near 1; 0 = off.", "training", min=0.0)
    ema: bool = opt(False, "Keep an exponential moving average of the weights, used for eval, samples and "
                    "--generate_only.", "training")
    ema_decay: float = opt(0.999, "EMA decay per step.", "training", min=0.0, max=1.0)
    curriculum: bool = opt(False, "Grow the training block size from --curriculum_start_block_size to "
                           "--block_size over --curriculum_steps, in doubling steps.", "training")
    curriculum_start_block_size: int = opt(32, "First training block size of the curriculum.", "training", min=1)
    curriculum_steps: int = opt(500, "Steps until the curriculum reaches --block_size.", "training", min=1)

    # optimizer
    lr: float = opt(3e-3, "Peak learning rate.", "optimizer", min=0.0, min_exclusive=True)
    weight_decay: float = opt(0.1, "AdamW weight decay (never applied to norms, biases or embeddings).",
                              "optimizer", min=0.0)
    beta1: float = opt(0.9, "Adam beta1.", "optimizer", min=0.0, max=1.0, max_exclusive=True)
    beta2: float = opt(0.99, "Adam beta2.", "optimizer", min=0.0, max=1.0, max_exclusive=True)
    optimizer: str = opt("adamw", "adamw, adamw8bit (bitsandbytes), lion or muon (Muon for the blocks' "
                         "matrices, AdamW for the rest).", "optimizer", choices=("adamw", "adamw8bit", "lion", "muon"))
    muon_lr: float = opt(0.02, "Learning rate of the Muon-updated matrices (with --optimizer muon).", "optimizer",
                         min=0.0, min_exclusive=True)
    muon_momentum: float = opt(0.95, "Muon momentum (Nesterov).", "optimizer", min=0.0, max=1.0)
    muon_ns_steps: int = opt(5, "Newton-Schulz iterations that orthogonalise each Muon update: fewer are cheaper "
                             "(a fixed cost per step, large beside a small model's forward and backward on a "
                             "CPU) and orthogonalise less exactly.", "optimizer", min=1)

    # schedule
    lr_schedule: str = opt("cosine", "cosine, wsd (warmup-stable-decay), constant or linear, each after the "
                           "warmup.", "schedule", choices=("cosine", "wsd", "constant", "linear"))
    lr_decay_fraction: float = opt(0.2, "wsd: the fraction of the run (of its steps, or of --max_time with "
                                   "--max_steps 0) spent decaying, unless --lr_stable_steps is given.", "schedule",
                                   min=0.0, min_exclusive=True, max=1.0)
    lr_stable_steps: int = opt(0, "wsd: steps at full lr after the warmup; 0 = until --lr_decay_fraction of the "
                               "decay end remains.",
                               "schedule", min=0)
    lr_warmup_steps: int = opt(100, "Steps of linear warmup from 0 to lr.", "schedule", min=0)
    lr_decay_steps: int = opt(0, "Steps after which the decay has reached lr_min; 0 = max_steps.", "schedule",
                              min=0)
    lr_min: float = opt(3e-4, "Learning rate at the end of the decay.", "schedule", min=0.0)

    # eval, logging, checkpoints
    eval_interval: int = opt(200, "Evaluate every N steps (and at the last step); 0 disables eval.", "eval",
                             min=0)
    eval_iters: int = opt(20, "Batches averaged per evaluation.", "eval", min=1)
    eval_full: bool = opt(False, "Evaluate on the whole validation split, every token once (disjoint block_size "
                          "windows), instead of eval_iters random batches: the same estimate for every seed. The "
                          "train estimate then draws as many windows at random.", "eval")
    log_interval: int = opt(25, "Write a train row to metrics.jsonl every N steps.", "eval", min=1)
    sample_interval: int = opt(600, "Print a text sample every N steps; 0 disables.", "eval", min=0)
    checkpoint_interval: int = opt(500, "Save ckpt.pt every N steps (it is also saved at the end and on "
                                   "Ctrl+C); 0 = only then.", "eval", min=0)

    # generation
    prompt: str = opt("\n", "Text to start generation from.", "generation")
    sample_chars: int = opt(200, "New tokens to generate (characters for the char tokenizer).",
                            "generation", min=1)
    temperature: float = opt(0.8, "Sampling temperature; 0 = greedy.", "generation", min=0.0)
    top_k: int = opt(0, "Keep only the k most likely tokens; 0 = off.", "generation", min=0)
    top_p: float = opt(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability; "
                       "1.0 = off.", "generation", min=0.0, min_exclusive=True, max=1.0)
    repetition_penalty: float = opt(1.0, "Divide positive (multiply negative) logits of tokens already in the "
                                    "context by this; 1.0 = off.", "generation", min=0.0, min_exclusive=True)
    num_samples: int = opt(1, "Samples to generate with --generate_only.", "generation", min=1)
    ckpt: str = opt("last", "Checkpoint to generate from: ckpt.pt (last) or ckpt_best.pt (best).",
                    "generation", choices=("last", "best"))
    drop_unknown_chars: bool = opt(False, "Drop characters the vocabulary lacks (with a warning) instead of "
                                   "stopping with an error: in prompts, and in the training text of an --init_from "
                                   "run whose model has a char vocabulary.", "generation")
    kv_cache: bool = opt(True, "Cache keys and values during generation: one position per step instead of "
                         "the whole context; the same tokens.", "generation")
    stop: str = opt("", "Stop a sample where the generated text first contains this string (the string is not "
                    "printed); several alternatives are separated by |; escapes: \\n newline, \\t tab, \\| bar, "
                    "\\\\ backslash; empty = off.", "generation")

    # system
    device: str = opt("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.", "system", invocation=True)
    progress: bool = opt(True, "Show a progress bar.", "system", invocation=True)
    overwrite: bool = opt(False, "Start a fresh run in an --out_dir that already holds one, deleting its "
                          "checkpoints, metrics and log (without it, such a run is refused).", "system",
                          invocation=True)
    skip_nonfinite: bool = opt(False, "Skip optimizer steps whose loss or gradient is NaN/inf (counted in the log "
                               "and metrics) instead of stopping the run.", "system")
    ddp: bool = opt(False, "Distributed data parallel across the processes started by torchrun.", "system",
                    invocation=True)
    ddp_backend: str = opt("auto", "Process-group backend: auto (NCCL on Linux with CUDA, else Gloo), nccl or "
                           "gloo.", "system", choices=("auto", "nccl", "gloo"), invocation=True)
    tensorboard: bool = opt(False, "Also log the metrics as TensorBoard scalars in out_dir/tensorboard (needs the "
                            "`tensorboard` extra).", "system")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(Config)}
SHAPE_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["shape"])
INVOCATION_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["invocation"])


def _type_of(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[f.type if isinstance(f.type, str)
                                                                  else f.type.__name__]


def coerce(name: str, value: Any) -> Any:
    """Check one JSON value against its field's type; an int is accepted for a float, nothing else."""
    if name not in FIELDS:
        raise UserError(f"unknown config key '{name}'; valid keys are listed by `python train_tinyllm.py --help`")
    kind = _type_of(FIELDS[name])
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"config key '{name}' must be {kind.__name__}, got {json.dumps(value)}")
    return value


# Below this a temperature or repetition penalty divides float32 logits into infinities and sampling fails;
# 1e-6 already samples exactly like greedy.
MIN_SAMPLING_SCALE, MAX_REPETITION_PENALTY = 1e-6, 1e6


def validate(cfg: Config) -> Config:
    """Check every value's range and choices, and the constraints between settings."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        meta = f.metadata
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"--{name} must be one of {', '.join(meta['choices'])}, got '{value}'")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, got {value}")
        lo, hi = meta["min"], meta["max"]
        if lo is not None and (value < lo or (meta["min_exclusive"] and value == lo)):
            bound = f"greater than {lo}" if meta["min_exclusive"] else f"at least {lo}"
            raise UserError(f"--{name} must be {bound}, got {value}")
        if hi is not None and (value > hi or (meta["max_exclusive"] and value == hi)):
            bound = f"less than {hi}" if meta["max_exclusive"] else f"at most {hi}"
            raise UserError(f"--{name} must be {bound}, got {value}")
    if 0 < cfg.temperature < MIN_SAMPLING_SCALE:
        raise UserError(f"--temperature must be 0 (greedy) or at least {MIN_SAMPLING_SCALE:g}, got {cfg.temperature}")
    if not MIN_SAMPLING_SCALE <= cfg.repetition_penalty <= MAX_REPETITION_PENALTY:
        raise UserError(f"--repetition_penalty must be between {MIN_SAMPLING_SCALE:g} and "
                        f"{MAX_REPETITION_PENALTY:g}, got {cfg.repetition_penalty}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    if cfg.n_kv_head and cfg.n_head % cfg.n_kv_head:
        raise UserError(f"--n_head ({cfg.n_head}) must be divisible by --n_kv_head ({cfg.n_kv_head})")
    if cfg.pos_encoding == "rope" and (cfg.n_embd // cfg.n_head) % 2:
        raise UserError(f"--pos_encoding rope needs an even head size, but n_embd / n_head = "
                        f"{cfg.n_embd // cfg.n_head}; change --n_embd or --n_head")
    if cfg.max_steps == 0 and cfg.max_time <= 0:
        raise UserError("--max_steps 0 trains for --max_time seconds: give --max_time (e.g. --max_time 300) "
                        "or a number of steps")
    if cfg.max_steps == 0 and (cfg.lr_decay_steps or cfg.lr_stable_steps):
        raise UserError("--lr_decay_steps and --lr_stable_steps count steps, but --max_steps 0 lays the schedule "
                        "over --max_time: leave them at 0, or give --max_steps")
    if cfg.lr_min > cfg.lr:
        raise UserError(f"--lr_min ({cfg.lr_min}) must not exceed --lr ({cfg.lr})")
    if cfg.curriculum and cfg.curriculum_start_block_size > cfg.block_size:
        raise UserError(f"--curriculum_start_block_size ({cfg.curriculum_start_block_size}) must not exceed "
                        f"--block_size ({cfg.block_size})")
    if not cfg.data_path:
        raise UserError("--data_path must name a text file")
    if not cfg.out_dir:
        raise UserError("--out_dir must name a folder")
    return cfg


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a config JSON file into checked key/values (not yet merged or range-validated)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: file not found: {p}")
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if dup := next((k for k in keys if keys.count(k) > 1), None):  # json would keep the last one silently
            raise UserError(f"--config {p}: the key {dup!r} is given more than once; keep one")
        return dict(items)

    def no_constant(name: str) -> None:  # NaN, Infinity: Python's json reads them, JSON has no such numbers
        raise UserError(f"--config {p}: {name} is not a number JSON allows; give a finite value")

    try:
        # utf-8-sig: a byte-order mark (as some Windows editors write) is not part of the JSON.
        raw = json.loads(p.read_text(encoding="utf-8-sig"), object_pairs_hook=pairs, parse_constant=no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--config: {p} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config: {p} must hold a JSON object of settings")
    try:
        return {k: coerce(k, v) for k, v in raw.items()}
    except UserError as e:
        raise UserError(f"--config {p}: {e}") from None


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from defaults overridden by `values` (each checked); unknown keys are errors."""
    return Config(**{k: coerce(k, v) for k, v in values.items()})


def save_json(cfg: Config, path: str | Path) -> None:
    from tinyllm.atomic import atomic_write_text

    atomic_write_text(Path(path), json.dumps(cfg.to_dict(), indent=2) + "\n")


class _BooleanAction(argparse.BooleanOptionalAction):
    """`--name` / `--no-name`, plus `--no_name` to match the snake_case of every other flag."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.option_strings += [f"--no_{s[2:]}" for s in option_strings if s.startswith("--")]

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        if option_string in self.option_strings:
            setattr(namespace, self.dest, not option_string.startswith(("--no-", "--no_")))


# What --ema means to the commands that read a finished run (sampling, serving) rather than train one.
EMA_READ_HELP = ("Use the EMA weights when the run kept them (it did if it was trained with --ema); --no-ema uses "
                 "the raw weights. (default: the run's own setting)")


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                  helps: dict[str, str] | None = None) -> None:
    """One flag per field (or per field named in `only`), grouped as in the dataclass. Defaults are SUPPRESSed
    so that the parsed namespace holds only what the user typed: that is what lets flags override JSON and
    checkpoints. `helps` replaces the help text (default included) of a flag that means something else to the
    command (see EMA_READ_HELP)."""
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for name, f in FIELDS.items():
        if only is not None and name not in only:
            continue
        meta, kind = f.metadata, _type_of(f)
        text = (helps or {}).get(name) or f"{meta['help']} (default: {f.default!r})"
        text = text.replace("%", "%%")  # argparse %-formats help
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            kwargs["action"] = _BooleanAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = kind.__name__.upper()
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
                kwargs.pop("metavar")
        groups[meta["group"]].add_argument(f"--{name}", **kwargs)


# --- the settings reference (docs/settings.md) is rendered from the fields above ---------------------------------

GROUP_TITLES = {
    "data": "Data", "model": "Model", "training": "Training", "optimizer": "Optimizer",
    "schedule": "Learning-rate schedule", "eval": "Evaluation, logging and checkpoints",
    "generation": "Generation", "system": "System",
}
MARKDOWN_COMMAND = "python -m tinyllm.config --markdown > docs/settings.md"


def _md_text(text: str) -> str:
    """Help text made safe for a markdown table cell: a `|` would end the cell and a `\\` would escape."""
    return text.replace("\\", "\\\\").replace("|", "&#124;").replace("<", "&lt;").replace("*", "\\*")


def _md_default(f: dataclasses.Field) -> str:
    return f"`{json.dumps(f.default)}`"


def _md_allowed(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta["choices"]:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    lo, hi = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (meta["min"], meta["max"]))
    low = None if lo is None else f"> {lo}" if meta["min_exclusive"] else f"≥ {lo}"
    high = None if hi is None else f"< {hi}" if meta["max_exclusive"] else f"≤ {hi}"
    if low and high and not (meta["min_exclusive"] or meta["max_exclusive"]):
        return f"{lo} to {hi}"
    return ", ".join(b for b in (low, high) if b)


def _md_flag(name: str, f: dataclasses.Field) -> str:
    if _type_of(f) is bool:
        return f"`--{name}` / `--no-{name}`"
    return f"`--{name}`"


def _md_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


_MD_PREAMBLE = f"""\
# Settings

<!-- Generated from the Config dataclass in tinyllm/config.py by `{MARKDOWN_COMMAND}`.
     Do not edit by hand: change the field in tinyllm/config.py and regenerate. -->

Every setting of tinyllm is one field of the `Config` dataclass in `tinyllm/config.py`. Its command-line flag,
JSON key, help text, default, allowed values and its field in the GUI's form all come from that declaration,
and so does this page (`{MARKDOWN_COMMAND}`; a test fails when the page is stale).
`python train_tinyllm.py --help` prints the same list.

- **Precedence.** Dataclass defaults < `--config FILE.json` (default `config/tiny_char_gpt.json`) <
  command-line flags. An explicit `--config` replaces the default JSON.
- **JSON keys** are the flag names without the dashes (`"n_layer": 4`). An unknown key, a wrong type or an
  out-of-range value is an error that names the key.
- **Switches** are `--name` / `--no-name` on the command line (`--no_name` works too), `true` / `false` in JSON.
- **Resuming.** With `--resume` or `--generate_only` the checkpoint's settings take the place of the defaults
  and the default JSON; the flags you give still override them. Settings marked *shape* define the model's
  tensors or vocabulary: a value that differs from the checkpoint's is an error. Settings marked *launch*
  belong to one launch, not to the run, and are never taken from the checkpoint.
- **Starting from a model.** With `--init_from PATH` the model's shape settings and its tokenizer come from
  PATH (a run, a checkpoint or a Hugging Face folder); a shape flag you give must agree with it. Everything else
  (learning rate, schedule, dropout, optimizer, steps, data) is yours.
- **Run modes** are flags of `train_tinyllm.py`, not settings: `--resume` continues the run in `--out_dir`
  from its `ckpt.pt`, `--generate_only` samples from its checkpoint instead of training.
"""


def settings_markdown() -> str:
    """The settings reference, one table per group, rendered from the Config dataclass (docs/settings.md)."""
    out = [_MD_PREAMBLE + "\nGroups: " + " · ".join(f"[{GROUP_TITLES[g]}](#{_md_slug(GROUP_TITLES[g])})"
                                                    for g in GROUPS)]
    for group in GROUPS:
        out += ["", f"## {GROUP_TITLES[group]}", "",
                "| flag | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for name, f in FIELDS.items():
            meta = f.metadata
            if meta["group"] != group:
                continue
            marks = [m for m, on in (("shape", meta["shape"]), ("launch", meta["invocation"])) if on]
            text = _md_text(meta["help"]) + "".join(f" *{m}*" for m in marks)
            out.append(f"| {_md_flag(name, f)} | {_type_of(f).__name__} | {_md_default(f)} | {_md_allowed(f)} "
                       f"| {text} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(prog="python -m tinyllm.config",
                                     description="Print the settings reference rendered from the Config dataclass.")
    parser.add_argument("--markdown", action="store_true", required=True,
                        help=f"print docs/settings.md as markdown ({MARKDOWN_COMMAND})")
    parser.parse_args(argv)
    sys.stdout.buffer.write(settings_markdown().encode("utf-8"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
