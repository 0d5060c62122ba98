"""argv -> config -> train | generate: the `train_tinyllm.py` / `tinyllm-train` command.

The config is resolved by tinyllm.runconfig (defaults < --config FILE < flags; on --resume and
--generate_only the checkpoint's config in place of the defaults; with --init_from the source's shape and
tokenizer). --generate_only runs the body of the
`tinyllm-generate` command (tinyllm.generate_cli), so both print the same text for the same settings.
"""

from __future__ import annotations

import argparse
import sys

from tinyllm import config as C
from tinyllm.errors import OneLineParser, exits_cleanly
from tinyllm.runconfig import resolve_run


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="train_tinyllm.py", help_command="python train_tinyllm.py",
        description="Train a tiny GPT on a text file, resume it, or sample from it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = p.add_argument_group("run")
    p.set_defaults(config=None)  # (before the flag, whose own default stays SUPPRESS: no "(default: None)" in help)
    run.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                     help=f"JSON file of settings (default: {C.DEFAULT_CONFIG_PATH.relative_to(C.REPO_ROOT)})")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="Continue the run in --out_dir from its ckpt.pt.")
    mode.add_argument("--generate_only", action="store_true",
                      help="Sample from the checkpoint in --out_dir and print the text to stdout.")
    C.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    with exits_cleanly():
        cfg, ckpt, source = resolve_run(ns)
        if ns.generate_only:
            from tinyllm.generate_cli import run_generation

            code = run_generation(cfg, ckpt)
        else:
            from tinyllm.train import train

            code = train(cfg, resume=ckpt, init=source)
    sys.exit(code)


if __name__ == "__main__":
    main()
