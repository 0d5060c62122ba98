"""Starting a new run from existing weights (`--init_from PATH`): what the source decides, and whether the new
text fits its tokenizer.

The source is anything tinyllm.hf_import.load_source reads (a tinyllm run folder, a checkpoint file, a Hugging
Face GPT2LMHeadModel / LlamaForCausalLM folder). It decides the model's shape settings (every `shape=True`
field of the config that the model has) and the tokenizer; the user decides everything else (learning rate,
schedule, dropout, optimizer, steps, data). A shape setting the user gave explicitly that differs from the
source's is an error naming it, as on --resume.

A char vocabulary cannot encode characters it has never seen: `check_text` lists them before anything is
written, or, with --drop_unknown_chars, says how many will be left out of the training text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.hf_import import Source
from tinyllm.text_source import iter_text_chunks, open_source
from tinyllm.tokenizer import Tokenizer, tokenizer_from_json

SHOWN_CHARS = 40  # unknown characters listed in a message; the rest are counted


def source_settings(src: Source) -> dict[str, Any]:
    """The source's value of every shape setting: its model's fields, its tokenizer's kind (and size, for a BPE),
    and no --tokenizer_path (the tokenizer comes with the source)."""
    tok = tokenizer_from_json(src.tokenizer_json)
    out = {k: getattr(src.args, k) for k in C.SHAPE_KEYS if hasattr(src.args, k)}
    out["tokenizer"] = tok.kind
    out["tokenizer_path"] = ""
    if tok.kind == "bpe":
        out["bpe_vocab_size"] = tok.vocab_size
    return out


def merge_source(values: dict[str, Any], explicit: dict[str, Any], src: Source) -> dict[str, Any]:
    """`values` (the run's settings before validation) with the source's shape settings in place. `explicit`
    holds what the user gave (flags, keys of an explicit --config): a shape setting there that differs from
    the source's is a UserError naming it."""
    shape = source_settings(src)
    where = values.get("init_from") or src.path
    for key, have in shape.items():
        if key in explicit and explicit[key] != have:
            if key == "tokenizer_path":
                raise UserError(f"--tokenizer_path {explicit[key]} conflicts with --init_from {where}, whose own "
                                "tokenizer the run uses; drop --tokenizer_path")
            raise UserError(f"--{key} {explicit[key]} conflicts with --init_from {where}, which has {key}={have}; "
                            "drop the flag (the model's shape and tokenizer come from the model you start from), or "
                            "leave out --init_from to train a new model")
    return {**values, **shape}


def apply_source(cfg: C.Config, src: Source) -> C.Config:
    """`cfg` with the source's shape settings (for callers that built the config themselves; the command line
    goes through merge_source, which also reports conflicts)."""
    return C.validate(dataclasses.replace(cfg, **source_settings(src)))


def _char_counts(text_chunks: Any, vocab: np.ndarray) -> dict[int, int]:
    """Code point -> occurrences, for the code points of the text missing from the sorted array `vocab`."""
    counts: dict[int, int] = {}
    for chunk in text_chunks:
        codes = np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        bad = codes[~np.isin(codes, vocab, assume_unique=False)]
        if len(bad):
            for code, n in zip(*np.unique(bad, return_counts=True), strict=True):
                counts[int(code)] = counts.get(int(code), 0) + int(n)
    return counts


def unknown_characters(tokenizer: Tokenizer, data_path: str) -> dict[str, int]:
    """The characters of the text at data_path (a file, or every text file of a folder or pattern) that a char
    tokenizer lacks, with their counts, in code point order (empty for a BPE, which encodes any text). The text
    is streamed, never held whole."""
    if tokenizer.kind != "char":
        return {}
    vocab = np.array(sorted(ord(c) for c in tokenizer.chars), dtype=np.uint32)  # type: ignore[attr-defined]
    files = open_source(data_path).text_files
    counts = _char_counts((chunk for f in files for chunk in iter_text_chunks(f)), vocab)
    return {chr(c): counts[c] for c in sorted(counts)}


def describe_characters(counts: dict[str, int]) -> str:
    shown = [f"{c!r} ({n:,}x)" for c, n in list(counts.items())[:SHOWN_CHARS]]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_text(cfg: C.Config, tokenizer_json: str, whose: str | None = None) -> str | None:
    """Whether a tokenizer the run did not build from its text (the source's; `whose` names another, such as a
    --tokenizer_path file) encodes the run's text: a UserError listing the characters a char vocabulary lacks,
    or with --drop_unknown_chars the warning to give (None when every character is known)."""
    counts = unknown_characters(tokenizer_from_json(tokenizer_json), cfg.data_path)
    if not counts:
        return None
    total = sum(counts.values())
    what = (f"{len(counts)} distinct character{'s' if len(counts) > 1 else ''} ({total:,} in all) that the char "
            f"vocabulary of {whose or f'--init_from {cfg.init_from}'} lacks: {describe_characters(counts)}")
    if not cfg.drop_unknown_chars:
        raise UserError(f"--data_path {cfg.data_path} has {what}; pass --drop_unknown_chars to leave them out of "
                        "the training text, or remove them from the text")
    return f"warning: --drop_unknown_chars: leaving out of the training text {what}"
