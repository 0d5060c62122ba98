"""The generation command: `tinyllm-generate` / `python -m tinyllm.generate_cli --out_dir RUN ...`.

It takes the generation settings of the trainer's CLI (the same dataclass fields, help and validation) and
resolves them the way `train_tinyllm.py --generate_only` does (tinyllm.runconfig): the checkpoint's config,
overridden by the flags given. `--generate_only` itself runs `run_generation` below, so both print the same
text for the same settings. `--interactive` keeps the model loaded and reads one prompt per line until EOF,
an empty line or Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, TextIO

import torch

from tinyllm import config as C
from tinyllm.checkpoint import CKPT_NAMES
from tinyllm.device import resolve_device
from tinyllm.errors import OneLineParser, UserError, exits_cleanly
from tinyllm.generate import SamplingParams, model_from_checkpoint, parse_stop, prompt_ids, stream_text
from tinyllm.runconfig import resolve_config

# The settings this command takes: where the run is, what to sample, and with what.
FLAGS = ("out_dir", "seed", "ema", "device",
         *(name for name, f in C.FIELDS.items() if f.metadata["group"] == "generation"))


class _Session:
    """A loaded model and everything needed to sample from it, kept for as many prompts as come."""

    def __init__(self, cfg: C.Config, ckpt: dict[str, Any]):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, self.tokenizer = model_from_checkpoint(ckpt, self.device, use_ema=cfg.ema)
        self.params = SamplingParams.from_config(cfg)
        self.stops = parse_stop(cfg.stop)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.tokens = 0
        ema = ", EMA weights" if cfg.ema and "ema" in ckpt else ""
        print(f"loaded {cfg.out_dir}/{CKPT_NAMES[cfg.ckpt]} (step {ckpt['step']}, "
              f"{self.model.num_params():,} parameters{ema}) on {self.device}", file=sys.stderr)

    def samples(self, prompt: str, out: TextIO) -> None:
        """Print cfg.num_samples continuations of `prompt` (each after the prompt), streamed as they come."""
        cfg, tok = self.cfg, self.tokenizer
        try:
            ids = prompt_ids(tok, prompt, cfg.drop_unknown_chars)
        except UserError as e:
            raise UserError(f"--prompt: {e}") from None
        dropped = tok.unknown(prompt) if cfg.drop_unknown_chars and prompt else []
        if dropped:
            print(f"warning: dropped prompt characters not in the vocabulary: {dropped}", file=sys.stderr)
            prompt = "".join(c for c in prompt if c not in dropped)  # echo what the model was given
        for i in range(cfg.num_samples):
            if i:
                out.write("\n\n")
            out.write(prompt)
            for piece in stream_text(self.model, tok, ids, cfg.sample_chars, self.params, self.generator,
                                     self.stops):
                out.write(piece)
                out.flush()
                self.tokens += 1
            out.write("\n")
        out.flush()


def run_generation(cfg: C.Config, ckpt: dict[str, Any], interactive: bool = False) -> int:
    """Sample from the checkpoint as cfg says (the body of --generate_only and of this command)."""
    session = _Session(cfg, ckpt)
    t0 = time.perf_counter()
    if interactive:
        _prompt_loop(session)
    else:
        session.samples(cfg.prompt, sys.stdout)
    dt = time.perf_counter() - t0
    if not interactive:
        print(f"generated {session.tokens} tokens in {dt:.2f} s ({session.tokens / max(dt, 1e-9):,.0f} tokens/s)",
              file=sys.stderr)
    return 0


def _prompt_loop(session: _Session) -> None:
    """One prompt per line; an empty line, end of input (Ctrl+D) or Ctrl+C ends the loop. A prompt that
    cannot be encoded is reported and the loop goes on."""
    print("type a prompt and press Enter (an empty line, Ctrl+D or Ctrl+C quits)", file=sys.stderr)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input(), where the platform has it
    while True:
        try:
            sys.stderr.write("> ")
            sys.stderr.flush()
            line = input()
        except (EOFError, KeyboardInterrupt):
            sys.stderr.write("\n")
            return
        if not line:
            return
        try:
            session.samples(line, sys.stdout)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            return


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="tinyllm-generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Sample text from a trained tinyllm run. Settings not given are the run's own.")
    p.add_argument("--interactive", action="store_true",
                   help="Keep the model loaded and read one prompt per line from stdin; an empty line, "
                        "Ctrl+D or Ctrl+C quits.")
    C.add_arguments(p, only=FLAGS, helps={"ema": C.EMA_READ_HELP})
    return p


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    interactive = ns.interactive
    # The trainer's own resolution for --generate_only: checkpoint config < flags, shapes checked.
    ns.config, ns.resume, ns.generate_only = None, False, True
    del ns.interactive
    with exits_cleanly():
        cfg, ckpt = resolve_config(ns)
        code = run_generation(cfg, ckpt, interactive=interactive)
    sys.exit(code)


if __name__ == "__main__":
    main()
