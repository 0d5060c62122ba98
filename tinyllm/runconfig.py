"""A run's config from parsed flags: the one resolution that train_tinyllm.py and tinyllm-generate share.

Precedence: dataclass defaults < --config FILE (default config/tiny_char_gpt.json) < flags. With --resume
or --generate_only the checkpoint's config takes the place of the defaults and the default JSON; flags
(and the keys of an explicitly given --config) still override it, except shape settings, which must match.
With --init_from (a new run from existing weights) the source's shape settings and tokenizer take the place of
the defaults' and the JSON's; a shape setting given explicitly must match the source (tinyllm.init_from).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyllm import config as C
from tinyllm.checkpoint import CKPT_NAMES, load_model_checkpoint, require_resumable
from tinyllm.errors import UserError

if TYPE_CHECKING:
    from tinyllm.hf_import import Source


def resolve_config(ns: argparse.Namespace) -> tuple[C.Config, dict[str, Any] | None]:
    """The validated config and, for --resume/--generate_only, the loaded checkpoint. `ns` holds the
    Config fields given as flags, plus `config` (a JSON path or None), `resume` and `generate_only`."""
    cfg, ckpt, _ = resolve_run(ns)
    return cfg, ckpt


def resolve_run(ns: argparse.Namespace) -> tuple[C.Config, dict[str, Any] | None, Source | None]:
    """resolve_config plus, for a new run with --init_from, the source it starts from (loaded once, here)."""
    flags = {k: v for k, v in vars(ns).items() if k in C.FIELDS}
    explicit_json = C.load_json(ns.config) if ns.config else {}
    overrides = {**explicit_json, **flags}
    if not (ns.resume or ns.generate_only):
        base = C.load_json(C.DEFAULT_CONFIG_PATH) if not ns.config and C.DEFAULT_CONFIG_PATH.is_file() else {}
        values = {**base, **overrides}
        if not values.get("init_from"):
            return C.validate(C.from_dict(values)), None, None
        from tinyllm.hf_import import load_source
        from tinyllm.init_from import merge_source

        src = load_source(values["init_from"], "--init_from")
        return C.validate(C.from_dict(merge_source(values, overrides, src))), None, src

    default_out = C.load_json(C.DEFAULT_CONFIG_PATH).get("out_dir", C.Config.out_dir) \
        if C.DEFAULT_CONFIG_PATH.is_file() else C.Config.out_dir
    out_dir = overrides.get("out_dir", default_out)
    mode = "--resume" if ns.resume else "--generate_only"
    if flags.get("init_from"):
        raise UserError(f"--init_from starts a new run from a model, {mode} " + (
            f"continues the run in {out_dir}: to continue it, drop --init_from (the run remembers where it "
            "started); to start afresh from the model, drop --resume and give a new --out_dir (or --overwrite)"
            if ns.resume else f"samples from the run in {out_dir}; use one or the other"))
    which = overrides.get("ckpt", "last") if ns.generate_only else "last"
    if which not in CKPT_NAMES:
        raise UserError(f"--ckpt must be one of {', '.join(CKPT_NAMES)}, got '{which}'")
    path = Path(out_dir) / CKPT_NAMES[which]
    if which == "best" and not path.is_file() and (Path(out_dir) / CKPT_NAMES["last"]).is_file():
        raise UserError(f"--ckpt best: {out_dir} has no {CKPT_NAMES['best']} (it is written when the run evaluates, "
                        "and this one did not); use --ckpt last")
    ckpt = load_model_checkpoint(path)
    if ns.resume:
        require_resumable(ckpt, path)
    base = {k: v for k, v in ckpt["config"].items() if k in C.FIELDS and k not in C.INVOCATION_KEYS}
    for key in C.SHAPE_KEYS:
        # A key missing from an older checkpoint's config had its default value (the baseline model).
        saved = base.get(key, C.FIELDS[key].default)
        if key in overrides and overrides[key] != saved:
            raise UserError(f"--{key} {overrides[key]} conflicts with the checkpoint in {out_dir}, which has "
                            f"{key}={saved}; drop the flag, or train a new run in another --out_dir")
    # Where the run started from stays as it was. A --config naming another model to start from is an error
    # (the same one, as in a preset or the GUI's settings of the run, is fine).
    started = base.get("init_from", "")
    named = overrides.get("init_from", "")
    if ns.resume and named and named != started:
        raise UserError(f"--config {ns.config} has init_from {named!r}, but the run in {out_dir} "
                        + (f"started from {started!r}" if started else "did not start from a model")
                        + "; --resume continues a run from its own checkpoint: drop init_from from the file, or "
                        "start a new run (without --resume) in another --out_dir")
    cfg = C.validate(C.from_dict({**base, **overrides, "init_from": started}))
    if ns.resume and 0 < cfg.max_steps < ckpt["step"]:
        raise UserError(f"--max_steps {cfg.max_steps}: the run in {out_dir} is already at step {ckpt['step']}; "
                        f"give a --max_steps above {ckpt['step']} to train it further")
    return cfg, ckpt, None
