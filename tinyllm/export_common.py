"""What the exporters share (tinyllm.export_hf, tinyllm.export_gguf, and the command in tinyllm.export): which
model options they know, the options no export target can represent, and how a refusal names them.

An export that loads but computes something else would be worse than none, so every option is either mapped
exactly or refused; a refusal names every option in the way, as the command line spells it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from tinyllm.errors import UserError
from tinyllm.model import QK_NORM_EPS, ModelArgs

FORMATS = {"hf": "Hugging Face", "gguf": "GGUF"}
GGUF_DTYPES = ("f32", "f16", "q8_0")
DEFAULT_GGUF_DTYPE = "f16"

# Every ModelArgs field, as the exporters see it. A new architecture option must be added here (and mapped or
# refused by each exporter); tests/test_export_common.py fails until it is, so no option is exported by accident.
HANDLED_FIELDS = frozenset({
    "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "bias", "weight_tying", "mlp", "mlp_hidden",
    "pos_encoding", "rope_theta", "norm", "qk_norm", "parallel_block", "sliding_window", "n_kv_head",
    "logit_softcap", "norm_eps",
    # training only: no effect on an evaluated model's logits
    "dropout", "attention_dropout", "layerdrop", "grad_checkpointing",
})


def flag(name: str, value: Any) -> str:
    """The command-line spelling of a setting: --name / --no-name for booleans, --name VALUE otherwise."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def check_known_options(a: ModelArgs, where: str) -> None:
    """An option newer than the exporters: only its default (the old behaviour) is safe to export."""
    for f in fields(a):
        if f.name not in HANDLED_FIELDS and getattr(a, f.name) != f.default:
            raise UserError(f"cannot export {flag(f.name, getattr(a, f.name))} to {where}: this exporter does not "
                            "know that option yet")


def common_needs(a: ModelArgs, qk_norm: bool = False) -> list[tuple[str, Any, Any]]:
    """(flag, this run's value, the value the export needs), for the options no target has, and q/k norm,
    which a target has (`qk_norm`) or has not."""
    return [
        ("parallel_block", a.parallel_block, False),
        ("qk_norm", a.qk_norm, qk_norm),
        ("sliding_window", a.sliding_window if a.window < a.block_size else 0, 0),
        ("logit_softcap", a.logit_softcap, 0.0),
    ]


# tinyllm's --mlp -> the activation of a gated MLP, down(act(gate(x)) * up(x)), that computes it: SwiGLU with
# silu, and ReLU² with relu and gate = up (relu(h) * h = relu(h)²). The Hugging Face exporter and importer share it.
GATED_ACTIVATIONS = {"swiglu": "silu", "relu2": "relu"}


def qk_norm_target_needs(a: ModelArgs) -> list[tuple[str, Any, Any]]:
    """What the targets with q/k norm (Qwen 3, llama.cpp's apertus and qwen3) add: no MLP biases, and one eps
    for every norm, q/k norm included, so --norm_eps must be tinyllm's fixed q/k norm eps."""
    return [("bias", a.bias, False), ("norm_eps", a.norm_eps, QK_NORM_EPS)]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def refuse_unmet(a: ModelArgs, needs: list[tuple[str, Any, Any]], where: str, target: str) -> None:
    """UserError naming every option whose value the target cannot compute (all of them, so that one retrain
    fixes them all)."""
    unmet = [(name, have, need) for name, have, need in needs if have != need]
    if unmet:
        have = _join([flag(name, value) for name, value, _ in unmet])
        need = _join([flag(name, value) for name, _, value in unmet])
        raise UserError(f"cannot export {have} to {where}: {flag('pos_encoding', a.pos_encoding)} exports as "
                        f"{target}, which needs {need}")


def check_output(out_dir: str | Path, output: Path, fmt: str, overwrite: bool) -> None:
    """Refuse an --output whose replacement would lose work. Without --overwrite nothing existing is replaced
    (an empty folder is fine for a Hugging Face export); with it, only an earlier export of the same format: never
    the run folder or a folder holding it (replacing it would delete the run), and never another kind of file,
    such as the run's ckpt.pt."""
    run, out = Path(out_dir).resolve(), output.resolve()
    if out == run or out in run.parents:
        where = "the run folder" if out == run else f"a folder that holds the run {out_dir}"
        raise UserError(f"--output {output} is {where}; writing the export there would delete the run: choose "
                        "another --output")
    if fmt == "gguf":
        if output.is_dir():
            raise UserError(f"--output {output} is a folder; name the .gguf file to write")
        if output.exists() and not overwrite:
            raise UserError(f"--output {output} already exists; choose another file or pass --overwrite to replace "
                            "it")
        if output.exists() and not _is_gguf(output):
            raise UserError(f"--output {output} is not a GGUF file; --overwrite only replaces an earlier export: "
                            "choose another file")
        return
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; choose a folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"--output {output} already exists and is not empty; choose another folder or pass "
                            "--overwrite to replace it")
        if not _is_hf_export(output):
            raise UserError(f"--output {output} is not a Hugging Face model folder (no config.json naming its "
                            "architectures); --overwrite only replaces an earlier export: choose another folder")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _is_hf_export(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and bool(cfg.get("architectures"))
