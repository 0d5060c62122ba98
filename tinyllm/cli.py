"""argv -> config -> train | generate.

Precedence: dataclass defaults < --config FILE (default config/tiny_char_gpt.json) < flags. With --resume
or --generate_only the checkpoint's config takes the place of the defaults and the default JSON; flags
(and the keys of an explicitly given --config) still override it, except shape settings, which must match.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tinyllm import config as C
from tinyllm.checkpoint import CKPT_NAMES, load_checkpoint
from tinyllm.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # One line instead of argparse's usage block, which for this many flags spans a screen.
        self.exit(2, f"error: {message} (see python train_tinyllm.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="train_tinyllm.py",
        description="Train a tiny GPT on a text file, resume it, or sample from it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument("--config", default=None, metavar="FILE",
                     help=f"JSON file of settings (default: {C.DEFAULT_CONFIG_PATH.relative_to(C.REPO_ROOT)})")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="Continue the run in --out_dir from its ckpt.pt.")
    mode.add_argument("--generate_only", action="store_true",
                      help="Sample from the checkpoint in --out_dir and print the text to stdout.")
    C.add_arguments(p)
    return p


def resolve_config(ns: argparse.Namespace) -> tuple[C.Config, dict[str, Any] | None]:
    """The validated config and, for --resume/--generate_only, the loaded checkpoint."""
    flags = {k: v for k, v in vars(ns).items() if k in C.FIELDS}
    explicit_json = C.load_json(ns.config) if ns.config else {}
    overrides = {**explicit_json, **flags}
    if not (ns.resume or ns.generate_only):
        base = C.load_json(C.DEFAULT_CONFIG_PATH) if not ns.config and C.DEFAULT_CONFIG_PATH.is_file() else {}
        return C.validate(C.from_dict({**base, **overrides})), None

    default_out = C.load_json(C.DEFAULT_CONFIG_PATH).get("out_dir", C.Config.out_dir) \
        if C.DEFAULT_CONFIG_PATH.is_file() else C.Config.out_dir
    out_dir = overrides.get("out_dir", default_out)
    which = overrides.get("ckpt", "last") if ns.generate_only else "last"
    if which not in CKPT_NAMES:
        raise UserError(f"--ckpt must be one of {', '.join(CKPT_NAMES)}, got '{which}'")
    ckpt = load_checkpoint(Path(out_dir) / CKPT_NAMES[which])
    base = {k: v for k, v in ckpt["config"].items() if k in C.FIELDS and k not in C.INVOCATION_KEYS}
    for key in C.SHAPE_KEYS:
        # A key missing from an older checkpoint's config had its default value (the baseline model).
        saved = base.get(key, C.FIELDS[key].default)
        if key in overrides and overrides[key] != saved:
            raise UserError(f"--{key} {overrides[key]} conflicts with the checkpoint in {out_dir}, which has "
                            f"{key}={saved}; drop the flag, or train a new run in another --out_dir")
    return C.validate(C.from_dict({**base, **overrides})), ckpt


def run_generate(cfg: C.Config, ckpt: dict[str, Any]) -> int:
    # The same code as the `tinyllm-generate` command, so both print the same text for the same settings.
    from tinyllm.generate_cli import run_generation

    return run_generation(cfg, ckpt)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        cfg, ckpt = resolve_config(ns)
        if ns.generate_only:
            code = run_generate(cfg, ckpt)
        else:
            from tinyllm.train import train

            code = train(cfg, resume=ckpt)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
