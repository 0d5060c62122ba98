"""Evaluate a model on a text: `tinyllm-eval --model PATH --data_path FILE_OR_FOLDER` (also `python -m
tinyllm.evaluate`).

PATH is anything tinyllm.hf_import.load_source reads: a tinyllm run folder, one of its checkpoint files, or a
Hugging Face GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder. The text is tokenised whole with the
model's own tokenizer, and every token but the first is predicted from the tokens before it, in windows of the model's
context length (block_size). --data_path may also be a folder or a glob pattern, as for training: its .txt and
.md files, in sorted path order, each tokenised whole, joined by the separator training puts between documents
(the end-of-text token, else a blank line); `bytes` counts the files' text only, not the separators.

* disjoint windows (the default, `--stride 0`): the text is cut into consecutive windows and every token is
  scored once, seeing only the earlier tokens of its own window (from none to block_size - 1);
* sliding windows (`--stride S`, 1 <= S <= block_size): windows start every S tokens and only the tokens new
  in each window are scored, so every token after the first window sees at least block_size - S tokens
  (the "perplexity with a sliding window" of the transformers docs). Smaller S: lower loss, more compute.

Reported: `loss`, the mean cross-entropy in nats per scored token; `perplexity` = exp(loss); `bpb`, bits per
UTF-8 byte of the scored tokens' text, the figure that compares models with different tokenizers (a char and
a BPE model of the same text); `tokens` (scored) and `bytes` (their text's UTF-8 length). A progress bar goes
to stderr, a summary to stdout, and the last line of stdout is one JSON object with all of it.

Bad input (a missing or unusable --model or --data_path, a --stride longer than the context, a text the
tokenizer cannot encode) exits with status 2 and one line naming the flag, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinyllm.batches import eval_windows, window_batches
from tinyllm.errors import OneLineParser, UserError, exits_cleanly
from tinyllm.model import GPT
from tinyllm.text_source import open_source

# --- the text -----------------------------------------------------------------------------------------------

def file_token_ids(tokenizer: Any, data_path: str, drop_unknown: bool = False) -> np.ndarray:
    """The token ids of the UTF-8 file data_path, tokenised whole (as one document)."""
    from tinyllm.text_source import read_text

    text = read_text(data_path, "--data_path")
    if drop_unknown and tokenizer.unknown(text):
        shown = ", ".join(repr(c) for c in tokenizer.unknown(text)[:20])
        print(f"warning: --data_path {data_path}: left out characters the vocabulary lacks: {shown}", file=sys.stderr)
    try:
        return np.asarray(tokenizer.encode_array(text, drop_unknown=drop_unknown), dtype=np.int64)
    except UserError as e:
        raise UserError(f"--data_path {data_path}: {e}") from None


def data_token_ids(tokenizer: Any, data_path: str, drop_unknown: bool = False) -> tuple[np.ndarray, int]:
    """The token ids of --data_path and the UTF-8 bytes its separators' tokens stand for: a file as
    file_token_ids reads it (no separators); a folder or glob pattern as its files, each tokenised whole and
    joined by the separator training puts between documents (tinyllm.tokens.Separator)."""
    from tinyllm.tokens import Separator, join_documents

    source = open_source(data_path, "--data_path")
    if not source.is_documents:
        return file_token_ids(tokenizer, data_path, drop_unknown), 0
    print(source.summary(), file=sys.stderr)
    separator = Separator(tokenizer, "the model's tokenizer", source.spec)
    if separator.note:
        print(separator.note, file=sys.stderr)
    parts = (file_token_ids(tokenizer, str(f), drop_unknown) for f in source.text_files)
    return join_documents(parts, separator, tokenizer.byte_lengths())


# What turns --data_path into token ids: (ids, bytes of separator tokens), or just the ids. A file or the
# documents of a folder (data_token_ids) by default; tests and other callers may swap in their own.
TokenSource = Callable[[Any, str, bool], "np.ndarray | tuple[np.ndarray, int]"]
TOKEN_SOURCE: TokenSource = data_token_ids


# --- scoring the windows (tinyllm.batches.eval_windows) ---------------------------------------------------

@torch.no_grad()
def evaluate_ids(model: GPT, ids: np.ndarray, byte_lengths: np.ndarray, stride: int = 0, batch_size: int = 4,
                 progress: bool = True) -> dict[str, Any]:
    """Loss, perplexity, bits per byte and counts of `model` on the token ids (see the module docstring)."""
    context = model.args.block_size
    if len(ids) < 2:
        raise UserError(f"--data_path holds {len(ids)} token(s); evaluation needs at least 2 (one to predict "
                        "from, one to predict)")
    if not 0 <= stride <= context:
        what = "is negative" if stride < 0 else f"is longer than the model's context ({context} tokens)"
        raise UserError(f"--stride {stride} {what}; use 1 to {context}, or 0 for disjoint windows")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    lengths = torch.from_numpy(np.asarray(byte_lengths, dtype=np.int64))
    windows = eval_windows(len(ids), context, stride)
    batches = window_batches(windows, batch_size)
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(ids) - 1, unit="tok", desc="evaluating", file=sys.stderr, disable=not progress,
                  dynamic_ncols=True) as bar:
            for batch in batches:
                length = batch[0][1]
                rows = torch.stack([data[s:s + length + 1] for s, _, _ in batch])
                x, y = rows[:, :-1].to(device), rows[:, 1:]
                logits = model(x)[0].float()
                nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                      reduction="none").view(len(batch), length).cpu()
                scored = torch.arange(length)[None, :] >= torch.tensor([o for _, _, o in batch])[:, None]
                total_nll += float(nll[scored].double().sum())
                total_tokens += int(scored.sum())
                total_bytes += int(lengths[y[scored]].sum())
                bar.update(int(scored.sum()))
    finally:
        model.train(was_training)
    loss = total_nll / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709 nats
        "bpb": total_nll / math.log(2) / total_bytes if total_bytes else float("nan"),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "mode": "sliding" if 0 < stride < context else "disjoint",
        "context": context,
        "stride": stride if 0 < stride < context else context,
        "windows": len(windows),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def evaluate(model_path: str, data_path: str, stride: int = 0, batch_size: int = 4, device: str = "auto",
             use_ema: bool = True, drop_unknown: bool = False, progress: bool = True,
             token_source: TokenSource | None = None) -> dict[str, Any]:
    """Load the model at model_path and evaluate it on data_path; the figures and what they were made of."""
    from tinyllm.device import resolve_device
    from tinyllm.hf_import import load_model_and_tokenizer

    dev = resolve_device(device)
    model, tokenizer, src = load_model_and_tokenizer(model_path, "--model", dev, use_ema)
    got = (token_source or TOKEN_SOURCE)(tokenizer, data_path, drop_unknown)
    ids, separator_bytes = got if isinstance(got, tuple) else (got, 0)
    result = evaluate_ids(model, ids, tokenizer.byte_lengths(), stride, batch_size, progress)
    if separator_bytes:  # every separator follows a document, so it is scored: its bytes were all counted
        text_bytes = result["bytes"] - separator_bytes
        result["bpb"] = result["bpb"] * result["bytes"] / text_bytes if text_bytes > 0 else float("nan")
        result["bytes"] = text_bytes
    return {**result, "model": src.description, "data_path": str(data_path), "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "device": str(dev)}


# --- the command --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="tinyllm-eval", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Mean cross-entropy, perplexity and bits per byte of a model on a text. The "
                                  "last line of stdout is a JSON object of the figures.")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="A tinyllm run folder (its ckpt.pt), a checkpoint file (e.g. RUN/ckpt_best.pt), or a "
                        "Hugging Face GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder.")
    p.add_argument("--data_path", required=True, metavar="PATH",
                   help="The UTF-8 text file to evaluate on, or a folder (its .txt and .md files, recursively) or "
                        "a quoted glob pattern such as 'notes/**/*.txt'.")
    p.add_argument("--stride", type=int, default=0, metavar="N",
                   help="0: disjoint windows of the model's context length, each token scored once. N (1 to the "
                        "context length): sliding windows every N tokens, scoring only the new ones, so each "
                        "token sees at least context - N earlier tokens (lower loss, more compute).")
    p.add_argument("--batch_size", type=int, default=4, help="Windows per forward pass.")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="Use a tinyllm run's EMA weights where it kept them.")
    p.add_argument("--drop_unknown_chars", action="store_true",
                   help="Char models: leave out characters the vocabulary lacks (with a warning) instead of "
                        "stopping with an error.")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="Show a progress bar on stderr.")
    return p


def _summary(r: dict[str, Any]) -> str:
    windows = (f"sliding windows of {r['context']} tokens every {r['stride']}" if r["mode"] == "sliding"
               else f"disjoint windows of {r['context']} tokens")
    return (f"model       {r['model']}\n"
            f"data        {r['data_path']}: {r['tokens']:,} tokens scored ({r['bytes']:,} bytes), {r['tokenizer']} "
            f"tokenizer of {r['vocab_size']:,}\n"
            f"windows     {windows} ({r['windows']:,}), on {r['device']} in {r['seconds']:.1f} s\n"
            f"loss        {r['loss']:.4f} nats/token\n"
            f"perplexity  {r['perplexity']:.3f}\n"
            f"bpb         {r['bpb']:.4f} bits/byte")


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    with exits_cleanly():
        open_source(ns.data_path, "--data_path")  # before the model loads: a typo should not cost a minute
        r = evaluate(ns.model, ns.data_path, ns.stride, ns.batch_size, ns.device, ns.ema, ns.drop_unknown_chars,
                     ns.progress)
    print(_summary(r))
    print(json.dumps(r, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
