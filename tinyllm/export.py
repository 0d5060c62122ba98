"""Export a run so that other programs can run it: a Hugging Face folder or a GGUF file for llama.cpp.

    python -m tinyllm.export --out_dir RUN --format hf --output DIR [--ckpt last|best]
    python -m tinyllm.export --out_dir RUN --format gguf --output model.gguf [--dtype f32|f16|q8_0] [--ckpt best]

The work lives in `export_hf` (transformers' GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM) and
`export_gguf` (llama.cpp's `gpt2` / `llama` / `apertus` / `qwen3` architectures), on the rules they share in
`export_common` (which model options an exporter knows, HANDLED_FIELDS; the options no target can represent).
This module holds the command line and `check`: what a run would export as, or the UserError that names the
option(s) that prevent it, without writing anything (the GUI shows it before its Export button is pressed).

An export that loads but computes something else would be worse than none, so every option is either mapped
exactly or refused; a refusal exits with status 2 and one line naming the option, and writes nothing.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from tinyllm.errors import OneLineParser, UserError, exits_cleanly
from tinyllm.export_common import (  # noqa: F401 - HANDLED_FIELDS is re-exported for tests and readers
    DEFAULT_GGUF_DTYPE,
    FORMATS,
    GGUF_DTYPES,
    HANDLED_FIELDS,
)
from tinyllm.model import ModelArgs


def check(args: ModelArgs, tokenizer: Any, fmt: str, dtype: str | None = None) -> str:
    """What this model exports as in `fmt` (one line), or the UserError that names what prevents it."""
    if fmt == "hf":
        from tinyllm.export_hf import describe

        return describe(args, tokenizer)
    if fmt == "gguf":
        from tinyllm.export_gguf import describe

        return describe(args, tokenizer, dtype or DEFAULT_GGUF_DTYPE)
    raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")


def check_run(out_dir: str | Path, which: str, fmt: str, dtype: str | None = None) -> str:
    """check() for the checkpoint `which` of the run in out_dir (loads it; writes nothing)."""
    from tinyllm.checkpoint import CKPT_NAMES, load_model_checkpoint
    from tinyllm.tokenizer import tokenizer_from_json

    ckpt = load_model_checkpoint(Path(out_dir) / CKPT_NAMES[which])
    return check(ModelArgs(**ckpt["model_args"]), tokenizer_from_json(ckpt["tokenizer"]), fmt, dtype)


def default_output(out_dir: str | Path, fmt: str, dtype: str | None = None, which: str = "last") -> Path:
    """Where the GUI suggests writing: beside the run, named after it."""
    out = Path(out_dir)
    suffix = "" if which == "last" else f"-{which}"
    if fmt == "gguf":
        return out.parent / "export" / f"{out.name}{suffix}-{dtype or DEFAULT_GGUF_DTYPE}.gguf"
    return out.parent / "export" / f"{out.name}{suffix}-hf"


def command(out_dir: str | Path, fmt: str, output: str | Path, which: str = "last", dtype: str | None = None,
            no_ema: bool = False, overwrite: bool = False) -> list[str]:
    """The argv (after `python`) of the export command with these settings; defaults are left out."""
    argv = ["-m", "tinyllm.export", "--out_dir", str(out_dir), "--format", fmt, "--output", str(output)]
    if fmt == "gguf" and dtype and dtype != DEFAULT_GGUF_DTYPE:
        argv += ["--dtype", dtype]
    if which != "last":
        argv += ["--ckpt", which]
    if no_ema:
        argv.append("--no_ema")
    if overwrite:
        argv.append("--overwrite")
    return argv


def command_text(argv: list[str]) -> str:
    return shlex.join(["python", *argv])


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tinyllm.export",
                      description="Export a tinyllm run to a Hugging Face folder or a GGUF file.")
    p.add_argument("--out_dir", required=True, help="The run folder (holding ckpt.pt).")
    p.add_argument("--format", choices=tuple(FORMATS), default="hf",
                   help="hf: a transformers folder (safetensors, config.json, tokenizer, generation_config.json); "
                        "gguf: one file for llama.cpp, Ollama and LM Studio.")
    p.add_argument("--output", required=True, help="The folder (hf) or file (gguf) to write; it must not exist "
                   "(an empty folder is fine) unless --overwrite.")
    p.add_argument("--ckpt", choices=("last", "best"), default="last", help="ckpt.pt (last) or ckpt_best.pt (best).")
    p.add_argument("--dtype", choices=GGUF_DTYPES, default=None,
                   help=f"GGUF only: the weights' type (default {DEFAULT_GGUF_DTYPE}); norms and biases stay f32.")
    p.add_argument("--no_ema", action="store_true", help="Export the raw weights even if the run kept an EMA.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output (only once the new "
                   "one is complete).")
    return p


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    with exits_cleanly():
        if ns.format == "hf":
            if ns.dtype is not None:
                raise UserError("--dtype applies to --format gguf only; a Hugging Face folder is written in float32")
            from tinyllm.export_hf import export_hf

            export_hf(ns.out_dir, ns.output, ns.ckpt, use_ema=not ns.no_ema, overwrite=ns.overwrite)
        else:
            from tinyllm.export_gguf import export_gguf

            export_gguf(ns.out_dir, ns.output, ns.ckpt, dtype=ns.dtype or DEFAULT_GGUF_DTYPE,
                        use_ema=not ns.no_ema, overwrite=ns.overwrite)


if __name__ == "__main__":
    main()
