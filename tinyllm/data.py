"""The data of a run: cfg -> (tokenizer, training tokens, validation tokens).

This is the top of the data layer; each piece lives one level down: tinyllm.text_source reads the text (one
file, or the files of a folder or glob pattern), tinyllm.tokens turns it into token ids (in memory or in a
token file) and splits them, tinyllm.batches draws the training batches from them.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.text_source import TextSource, check_text_file, iter_text_chunks, open_source
from tinyllm.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_json
from tinyllm.tokens import (
    Separator,
    check_split_lengths,
    in_memory_documents,
    in_memory_tokens,
    memmap_tokens,
    split_ids,
    val_byte_count,
)


def prepare(cfg: Config, saved_tokenizer: str | None) -> tuple[Tokenizer, Any, Any, float]:
    """(tokenizer, train tokens, validation tokens, UTF-8 bytes per validation token).

    The token holders are tensors (in memory) or TokenFiles (--memmap_dataset); samplers take either. The
    bytes per token turn the validation loss into bits per byte (val_bpb), which compares across tokenizers;
    for a folder they are the bytes of the files' validation parts (the separators between them not counted).
    """
    source = open_source(cfg.data_path)
    if source.summary():
        print(source.summary(), file=sys.stderr, flush=True)
    tokenizer, origin = build_tokenizer(cfg, saved_tokenizer, source)
    if source.is_documents:
        note = Separator(tokenizer, origin, source.spec).note
        if note:
            print(note, file=sys.stderr, flush=True)
    if cfg.memmap_dataset:
        train, val, val_bytes = memmap_tokens(cfg, tokenizer, origin, source)
    elif source.is_documents:
        train, val, val_bytes = in_memory_documents(tokenizer, source, origin, cfg.val_fraction)
        check_split_lengths(train, val, cfg.block_size, need_val=cfg.eval_interval > 0, source=cfg.data_path)
    else:
        ids = in_memory_tokens(tokenizer, cfg.data_path, origin)
        train, val = split_ids(ids, cfg.val_fraction)
        check_split_lengths(train, val, cfg.block_size, need_val=cfg.eval_interval > 0, source=cfg.data_path)
        val_bytes = val_byte_count(val, tokenizer.byte_lengths()) if len(val) else 0
    return tokenizer, train, val, (val_bytes / len(val) if len(val) else 0.0)


# --- the tokenizer of a run --------------------------------------------------------------------------------


def build_tokenizer(cfg: Config, saved: str | None, source: TextSource | None = None) -> tuple[Tokenizer, str]:
    """The run's tokenizer and where it came from (for error messages).

    On resume the checkpoint's tokenizer is used as it is; else `--tokenizer_path` is loaded; else a new one
    is built by streaming `--data_path`: the char vocabulary from the whole text (so validation never meets
    an unknown character), the BPE merges from the training part only (the first 1 - val_fraction of its
    bytes, of each file's bytes for a folder), so that nothing about the validation text leaks into the
    tokenizer. A folder's char vocabulary also holds the newline that separates its documents.
    """
    if saved:
        return tokenizer_from_json(saved, drop_unknown=cfg.drop_unknown_chars), "the checkpoint's tokenizer"
    if cfg.tokenizer_path:
        return load_tokenizer_file(cfg), f"the tokenizer in --tokenizer_path {cfg.tokenizer_path}"
    source = source or open_source(cfg.data_path)
    if cfg.tokenizer == "bpe":
        if source.is_documents:
            chunks = (chunk for f in source.text_files for chunk in
                      iter_text_chunks(f, limit_bytes=_train_bytes(f.stat().st_size, cfg.val_fraction)))
            what = f"the training parts of the files of {cfg.data_path}"
        else:
            size = check_text_file(cfg.data_path).stat().st_size
            chunks = iter_text_chunks(cfg.data_path, limit_bytes=_train_bytes(size, cfg.val_fraction))
            what = f"the training part of {cfg.data_path}"
        return BPETokenizer.train(chunks, cfg.bpe_vocab_size, source=what), "the BPE tokenizer"
    if source.is_documents:
        texts = itertools.chain.from_iterable(iter_text_chunks(f) for f in source.text_files)
        return CharTokenizer.from_chunks(itertools.chain(texts, ["\n"])), "the character vocabulary"
    return CharTokenizer.from_chunks(iter_text_chunks(cfg.data_path)), "the character vocabulary"


def _train_bytes(size: int, val_fraction: float) -> int:
    return max(1, int(size * (1.0 - val_fraction)))


def load_tokenizer_file(cfg: Config) -> Tokenizer:
    p = Path(cfg.tokenizer_path)
    if p.is_dir():
        raise UserError(f"--tokenizer_path {p} is a folder; pass the tokenizer.json in it (a run folder holds one)")
    if not p.is_file():
        raise UserError(f"--tokenizer_path: file not found: {p}; pass a tokenizer.json written by an earlier run")
    try:
        tok = tokenizer_from_json(p.read_text(encoding="utf-8"), drop_unknown=cfg.drop_unknown_chars)
    except UnicodeDecodeError:
        raise UserError(f"--tokenizer_path {p} is not a tokenizer.json (not UTF-8 text)") from None
    except UserError as e:
        raise UserError(f"--tokenizer_path {p}: {e}") from None
    if tok.kind != cfg.tokenizer:
        raise UserError(f"--tokenizer_path {p} holds a {tok.kind} tokenizer but --tokenizer is {cfg.tokenizer}; "
                        f"pass --tokenizer {tok.kind}")
    if tok.kind == "bpe" and tok.vocab_size != cfg.bpe_vocab_size:
        raise UserError(f"--tokenizer_path {p} has {tok.vocab_size} tokens but --bpe_vocab_size is "
                        f"{cfg.bpe_vocab_size}; pass --bpe_vocab_size {tok.vocab_size}")
    return tok
