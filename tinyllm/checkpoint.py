"""Atomic saving, safe loading and the RNG part of resume state.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts, so `torch.load(...,
weights_only=True)` reads it and a file that tries to run code on load is refused. Every write goes to a
temporary file in the same folder, is fsynced, then `os.replace`d over the old one: a crash at any moment
leaves either the old complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllm.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported
from tinyllm.errors import UserError

FORMAT_VERSION = 1
CKPT_NAMES = {"last": "ckpt.pt", "best": "ckpt_best.pt"}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Serialise in memory first, so a failure while pickling never touches the file on disk."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


REQUIRED_KEYS = ("format_version", "config", "model_args", "model", "tokenizer", "step")
# What --resume needs besides: the training state at the step the checkpoint was saved.
RESUME_KEYS = ("optimizer", "data_state", "rng", "tokens_seen", "best_val_loss", "time_s")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The one way to read a checkpoint (resume, generation, GUI and export all call it)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no checkpoint at {p}; train first (python train_tinyllm.py --out_dir "
                        f"{p.parent}) or point --out_dir at a run folder")
    corrupt = UserError(f"checkpoint {p} is corrupt or truncated; use another checkpoint or retrain")
    # torch.save has written zip archives since 1.6; anything else is damage (or not ours), and is never
    # handed to the legacy unpickler.
    if not zipfile.is_zipfile(p):
        raise corrupt
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()] or ["unsupported content"]
        first = lines[0]
        raise UserError(f"refusing to load {p}: it holds objects that could run code when unpickled "
                        f"({first[:200]}); only load checkpoints you trust, written by tinyllm") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError):
        raise corrupt from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise UserError(f"{p} is not a tinyllm checkpoint (missing keys); use one written by tinyllm")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"{p} was written by a newer tinyllm (format {ckpt['format_version']}); upgrade tinyllm")
    ckpt["model"] = strip_prefixes(ckpt["model"])
    return ckpt


def load_model_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """load_checkpoint for a checkpoint a model is to be built from (every reader: resume, sampling, export,
    evaluation, a start from it): its settings and weights checked to fit (check_weights)."""
    ckpt = load_checkpoint(path, map_location)
    check_weights(ckpt, path)
    return ckpt


def check_weights(ckpt: dict[str, Any], p: str | Path) -> None:
    """Before a model is built from a loaded checkpoint: its model settings are ones this tinyllm knows, and the
    weights (and EMA weights) are the tensors of that model, name for name and shape for shape. A damaged or
    edited file is then one clear line, not a traceback from load_state_dict."""
    from dataclasses import fields

    from tinyllm.model import GPT, ModelArgs

    args = ckpt["model_args"]
    known = {f.name for f in fields(ModelArgs)}
    if not isinstance(args, dict) or set(args) - known:
        unknown = ", ".join(sorted(set(args) - known)) if isinstance(args, dict) else "not a mapping"
        raise UserError(f"{p} has model settings this tinyllm does not know ({unknown}); it was written by a newer "
                        "tinyllm (upgrade tinyllm) or edited")
    try:
        with torch.device("meta"):  # the tensors' names and shapes, without memory or initialisation
            want = {k: tuple(v.shape) for k, v in GPT(ModelArgs(**args)).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{p}: its model settings do not make a model ({e}); use another checkpoint") from None
    for part, what in (("model", "weights"), ("ema", "EMA weights")):
        if part not in ckpt:
            continue
        state = ckpt[part] if part == "model" else strip_prefixes(ckpt[part])
        got = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
        if got != want:
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            detail = "; ".join(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                               (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)
            raise UserError(f"{p}: its {what} do not match its model settings ({detail}); the file is damaged or "
                            "was edited: use another checkpoint")


def require_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """A checkpoint --resume can continue: one written by a training run, with its training state."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} has no training state to resume ({', '.join(missing)} missing); sample from it "
                        "with --generate_only, or start a new run from it with --init_from")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrappers' prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    out = {}
    for k, v in state_dict.items():
        # The wrappers nest in either order (DDP around a compiled model, or the reverse).
        while (prefix := next((p for p in ("_orig_mod.", "module.") if k.startswith(p)), None)) is not None:
            k = k[len(prefix):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # weights_only refuses ndarrays, so numpy's key array travels as a tensor, Python's as lists.
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
