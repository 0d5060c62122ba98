"""Token ids of the training text, held in memory or in a token file, and the train/validation split.

Two ways to hold the tokens:

* in memory (the default): the file is read and tokenised at start, into an int16/int32 tensor;
* `--memmap_dataset`: tokenised once into out_dir/tokens.bin (uint16 when the vocabulary fits, else
  uint32) with a JSON sidecar, out_dir/tokens.bin.json, that records what the file was made from. Later
  runs reuse it while the sidecar matches and rebuild it, saying why, when not. Tokenising streams the text
  in chunks (tinyllm.text_source), so neither the text nor the token list is ever held whole; batches are
  windows read through np.memmap.

Both give the same token ids, hence the same batches for the same seed (tinyllm.batches takes either holder).
The last --val_fraction of the tokens is validation.

A folder (or glob pattern) of files is a set of documents (tinyllm.text_source.TextSource): each file is
tokenised on its own and holds out its own last --val_fraction of tokens, so the split depends neither on the
order of the files nor on their sizes. The training parts, in file order, joined by a separator (Separator: the
end-of-text token with BPE, a blank line with char), are the training tokens; the validation parts, joined
likewise, the validation tokens. A token file lays them out the same way: all training tokens, then all
validation tokens. Its sidecar records every file's path, size and modification time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllm.atomic import atomic_write_text, plain_file_mode
from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.text_source import CHUNK_BYTES, TextSource, iter_text_chunks, open_source, read_text
from tinyllm.tokenizer import Tokenizer, split_text, tokenizer_hash

TOKENS_BIN = "tokens.bin"
TOKENS_META = "tokens.bin.json"
TOKENS_FORMAT = 1


# --- text -> token ids ---------------------------------------------------------------------------------------


def encode_chunks(tokenizer: Tokenizer, chunks: Iterator[str], origin: str, source: str) -> Iterator[np.ndarray]:
    """Token ids of each chunk; a character the vocabulary lacks is an error naming the data file."""
    for chunk in chunks:
        try:
            yield tokenizer.encode_array(chunk)
        except UserError as e:
            raise UserError(f"--data_path {source}: {e} ({origin} was built from other text; use the data it "
                            "was made for, or build a new tokenizer)") from None


# --- the train/validation split ------------------------------------------------------------------------------


def split_ids(ids: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `val_fraction` of the tokens is validation, as nanoGPT's prepare scripts do."""
    n_train = train_token_count(len(ids), val_fraction)
    return ids[:n_train], ids[n_train:]


def train_token_count(n_tokens: int, val_fraction: float) -> int:
    return int(n_tokens * (1.0 - val_fraction))


def check_split_lengths(train: Any, val: Any, block_size: int, need_val: bool, source: str) -> None:
    need = block_size + 1
    for name, part in (("train", train), ("validation", val)):
        if name == "validation" and not need_val:
            continue
        if len(part) < need:
            raise UserError(f"--data_path: the {name} split of {source} has {len(part)} tokens but "
                            f"--block_size {block_size} needs at least {need}; use a longer text, a smaller "
                            "--block_size or a different --val_fraction")


# --- in memory --------------------------------------------------------------------------------------------


def in_memory_tokens(tokenizer: Tokenizer, path: str, origin: str) -> torch.Tensor:
    """All the file's tokens in one tensor (int16 when the vocabulary allows, else int32)."""
    text = read_text(path)
    dtype = np.int16 if tokenizer.vocab_size < 2**15 else np.int32
    pieces = iter(split_text(text, CHUNK_BYTES))
    del text
    parts = [ids.astype(dtype) for ids in encode_chunks(tokenizer, pieces, origin, path)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))


def val_byte_count(ids: np.ndarray | torch.Tensor, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes of the text the tokens stand for (exact, even when a token is part of a character)."""
    arr = ids.numpy() if isinstance(ids, torch.Tensor) else ids
    return int(byte_lengths[arr.astype(np.int64)].sum())


# --- documents: the files of a folder, each split on its own, joined by a separator ------------------------------


class Separator:
    """What goes between two documents: the end-of-text token where the tokenizer has one (BPE), else a blank
    line: one newline after a part that ends with a newline, two after one that does not.

    A tokenizer without an end-of-text token other than char (an imported one may lack it) also gets the blank
    line; `note` then says so, for the log.
    """

    def __init__(self, tokenizer: Tokenizer, origin: str, source: str):
        self.tokenizer = tokenizer
        eot = getattr(tokenizer, "eot_id", None)
        self.note: str | None = None
        if eot is not None:
            self.description = f"the end-of-text token {tokenizer.eot_token}"  # type: ignore[attr-defined]
            self._fixed: np.ndarray | None = np.array([eot], dtype=np.int64)
            return
        self._fixed = None
        self.description = "a blank line"
        if tokenizer.kind != "char":
            self.note = (f"data: {origin} has no end-of-text token; the documents of {source} are separated by a "
                         "blank line instead")
        try:
            self._one, self._two = tokenizer.encode_array("\n"), tokenizer.encode_array("\n\n")
        except UserError:
            raise UserError(f"--data_path {source}: its documents are separated by a blank line, but {origin} has "
                            "no newline character; use a tokenizer built from text with newlines, or pass one "
                            "file") from None
        self._ends_with_newline: dict[int, bool] = {}

    def ids(self, last_id: int) -> np.ndarray:
        """The separator's token ids, after a part whose last token is `last_id`."""
        if self._fixed is not None:
            return self._fixed
        ends = self._ends_with_newline.get(last_id)
        if ends is None:
            ends = self._ends_with_newline[last_id] = self.tokenizer.decode([last_id]).endswith("\n")
        return self._one if ends else self._two


class _Joiner:
    """Appends parts to a list, with the separator between each two non-empty ones."""

    def __init__(self, separator: Separator, dtype: Any):
        self.separator, self.dtype = separator, dtype
        self.pieces: list[np.ndarray] = []
        self.separator_ids: list[np.ndarray] = []

    def add(self, part: np.ndarray) -> None:
        if not len(part):
            return
        if self.pieces:
            sep = self.separator.ids(int(self.pieces[-1][-1])).astype(self.dtype)
            self.pieces.append(sep)
            self.separator_ids.append(sep)
        self.pieces.append(part.astype(self.dtype, copy=False))

    def joined(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=self.dtype)


def join_documents(parts: Iterable[np.ndarray], separator: Separator,
                   byte_lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """The parts (token ids of whole documents) joined by the separator, as int64, and the UTF-8 bytes the
    separators' tokens stand for (text of no document: bits per byte leaves them out)."""
    joiner = _Joiner(separator, np.int64)
    for part in parts:
        joiner.add(np.asarray(part))
    return joiner.joined(), sum(val_byte_count(s, byte_lengths) for s in joiner.separator_ids)


def in_memory_documents(tokenizer: Tokenizer, source: TextSource, origin: str,
                        val_fraction: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training and validation tokens of a folder's files (see the module docstring) and the UTF-8 bytes of the
    validation parts' text (the separators not counted). One file's text is held at a time."""
    dtype = np.int16 if tokenizer.vocab_size < 2**15 else np.int32
    separator = Separator(tokenizer, origin, source.spec)
    train, val = _Joiner(separator, dtype), _Joiner(separator, dtype)
    lengths, val_bytes = tokenizer.byte_lengths(), 0
    for f in source.text_files:
        ids = in_memory_tokens(tokenizer, str(f), origin).numpy()
        k = train_token_count(len(ids), val_fraction)
        train.add(ids[:k])
        val.add(ids[k:])
        val_bytes += val_byte_count(ids[k:], lengths)
    return torch.from_numpy(train.joined()), torch.from_numpy(val.joined()), val_bytes


# --- the token file ------------------------------------------------------------------------------------------


@dataclass
class TokenFile:
    """Tokens [start, stop) of a token file (tokens.bin), read through np.memmap.

    A new memmap is opened for every batch and dropped after it: the pages a batch touched are then unmapped,
    so the process's resident memory does not creep up towards the file's size over a long run. It also
    makes the object cheap to pickle into DataLoader workers (a path and three numbers).
    """

    path: str
    dtype: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def _map(self) -> np.memmap:
        itemsize = np.dtype(self.dtype).itemsize
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.start * itemsize, shape=(len(self),))

    def windows(self, index: torch.Tensor) -> torch.Tensor:
        """Tokens at `index` (any shape) as int64."""
        mm = self._map()
        try:
            return torch.from_numpy(mm[index.numpy()].astype(np.int64))
        finally:
            del mm

    def chunks(self, n: int = 1 << 23) -> Iterator[np.ndarray]:
        """The tokens in order, `n` at a time, read with plain file reads (nothing stays mapped)."""
        itemsize = np.dtype(self.dtype).itemsize
        for lo in range(self.start, self.stop, n):
            yield np.fromfile(self.path, dtype=self.dtype, count=min(n, self.stop - lo), offset=lo * itemsize)


def gather_windows(data: Any, index: torch.Tensor) -> torch.Tensor:
    """data[index] as int64, for a token tensor or a TokenFile."""
    if isinstance(data, TokenFile):
        return data.windows(index)
    return data[index].long()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


# --- building or reusing tokens.bin: the sidecar says whether it still matches ---------------------------------


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def stale_reason(meta: dict[str, Any] | None, want: dict[str, Any], bin_path: Path) -> str | None:
    """Why an existing tokens.bin cannot be reused for `want`, or None if it can."""
    if meta is None or not bin_path.is_file():
        return f"no usable {TOKENS_BIN} in {bin_path.parent}"
    if meta.get("format") != TOKENS_FORMAT:
        return f"{TOKENS_BIN} has an older format"
    if meta.get("tokenizer_sha256") != want["tokenizer_sha256"]:
        return f"{TOKENS_BIN} was made with another tokenizer"
    old, new = meta.get("source") or {}, want["source"]
    if "files" in new or "files" in old:
        reason = _documents_stale_reason(meta, old, want)
        if reason:
            return reason
    elif old.get("path") != new["path"]:
        return f"{TOKENS_BIN} was made from another file ({old.get('path')})"
    elif old.get("size") != new["size"] or old.get("mtime_ns") != new["mtime_ns"]:
        return f"{new['path']} changed since {TOKENS_BIN} was made (size or modification time)"
    itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
    if meta.get("dtype") != want["dtype"] or bin_path.stat().st_size != meta.get("n_tokens", -1) * itemsize:
        return f"{TOKENS_BIN} does not match its sidecar (incomplete or damaged)"
    return None


def _documents_stale_reason(meta: dict[str, Any], old: dict[str, Any], want: dict[str, Any]) -> str | None:
    """Why a folder's tokens.bin cannot be reused: another source, a file changed, added or removed (named), a
    new --val_fraction (every file's split moves, so the layout does) or a new separator."""
    new = want["source"]
    if old.get("path") != new["path"] or old.get("kind") != new.get("kind"):
        return f"{TOKENS_BIN} was made from another source ({old.get('path')})"
    before = {f.get("path"): (f.get("size"), f.get("mtime_ns")) for f in old.get("files") or []}
    after = {f["path"]: (f["size"], f["mtime_ns"]) for f in new["files"]}

    def named(paths: list[str], what: str) -> str:
        more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
        return f"{paths[0]}{more} {what}"

    changed = [p for p in after if p in before and before[p] != after[p]]
    added = [p for p in after if p not in before]
    removed = [p for p in before if p not in after]
    found = ([named(changed, "changed (size or modification time)")] if changed else []) + \
            ([named(added, "was added")] if added else []) + ([named(removed, "was removed")] if removed else [])
    if found:
        return f"{'; '.join(found)} since {TOKENS_BIN} was made"
    if meta.get("val_fraction") != want["val_fraction"]:
        return (f"--val_fraction changed ({meta.get('val_fraction')} -> {want['val_fraction']}) and every file of "
                f"a folder holds out its own share, so {TOKENS_BIN} is laid out anew")
    if meta.get("separator") != want["separator"]:
        return f"{TOKENS_BIN} separates the documents with {meta.get('separator')}, not {want['separator']}"
    return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """A progress line every 10 s while text is tokenised (a multi-GB text takes minutes), and one at the end."""

    def __init__(self, total_bytes: int):
        self.total, self.done = total_bytes, 0
        self.t0 = self.t_report = time.perf_counter()

    def counted(self, chunks: Iterator[str]) -> Iterator[str]:
        for chunk in chunks:
            self.done += len(chunk.encode("utf-8"))
            yield chunk

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.t_report >= 10:
            _say(f"data: tokenised {self.done / 2**20:,.0f} of {self.total / 2**20:,.0f} MiB "
                 f"({self.done / 2**20 / (now - self.t0):.1f} MiB/s)")
            self.t_report = now

    def end(self, n_tokens: int) -> None:
        dt = time.perf_counter() - self.t0
        _say(f"data: tokenised {self.total / 2**20:,.1f} MiB into {n_tokens:,} tokens in {dt:.1f} s "
             f"({self.total / 2**20 / max(dt, 1e-9):.1f} MiB/s)")


def _write_tokens(tokenizer: Tokenizer, path: str, origin: str, dest: Path, dtype: str) -> int:
    """Stream the text of `path` through the tokenizer into the binary file `dest`; returns the token count."""
    progress, n = _Progress(Path(path).stat().st_size), 0
    with open(dest, "wb") as f:
        for ids in encode_chunks(tokenizer, progress.counted(iter_text_chunks(path)), origin, path):
            f.write(memoryview(np.ascontiguousarray(ids.astype(dtype))))
            n += len(ids)
            progress.tick()
        f.flush()
        os.fsync(f.fileno())
    progress.end(n)
    return n


def _write_documents(tokenizer: Tokenizer, source: TextSource, origin: str, dest: Path, dtype: str,
                     val_fraction: float, separator: Separator) -> tuple[int, int, int]:
    """Stream a folder's files into `dest`: every training part, then every validation part, each run joined by
    the separator (see the module docstring). Returns (tokens, training tokens, validation bytes).

    Each file is tokenised straight onto the end of the training run; once its token count is known, its last
    val_fraction is copied to a second temporary file and cut off the first. The validation run is appended at
    the end. One chunk of text or tokens is held at a time, whatever the folder's size.
    """
    itemsize = np.dtype(dtype).itemsize
    lengths = tokenizer.byte_lengths()
    progress = _Progress(source.total_bytes())
    fd, val_name = tempfile.mkstemp(prefix=f".{TOKENS_BIN}.val.", suffix=".tmp", dir=dest.parent)
    os.close(fd)

    def tokens(lo: int, hi: int, n: int = 1 << 23) -> Iterator[np.ndarray]:
        for at in range(lo, hi, n):
            yield np.fromfile(dest, dtype=dtype, count=min(n, hi - at), offset=at * itemsize)

    n_train = n_val = val_bytes = 0
    last_train: int | None = None
    last_val: int | None = None
    try:
        with open(dest, "wb") as train_f, open(val_name, "w+b") as val_f:
            for f in source.text_files:
                start = n_train  # where this file's tokens begin, after the separator
                if last_train is not None:
                    sep = separator.ids(last_train).astype(dtype)
                    train_f.write(memoryview(sep))
                    start += len(sep)
                n = 0
                for ids in encode_chunks(tokenizer, progress.counted(iter_text_chunks(f)), origin, str(f)):
                    train_f.write(memoryview(np.ascontiguousarray(ids.astype(dtype))))
                    n += len(ids)
                    progress.tick()
                train_f.flush()
                k = train_token_count(n, val_fraction)
                if n > k:
                    if last_val is not None:
                        sep = separator.ids(last_val).astype(dtype)
                        val_f.write(memoryview(sep))
                        n_val += len(sep)
                    for part in tokens(start + k, start + n):
                        val_f.write(memoryview(part))
                        n_val += len(part)
                        val_bytes += val_byte_count(part, lengths)
                        last_val = int(part[-1])
                # Keep the training part; an empty one takes its separator with it.
                n_train = start + k if k else n_train
                if k:
                    last_train = int(np.fromfile(dest, dtype=dtype, count=1, offset=(n_train - 1) * itemsize)[0])
                train_f.truncate(n_train * itemsize)
                train_f.seek(n_train * itemsize)
            val_f.flush()
            val_f.seek(0)
            shutil.copyfileobj(val_f, train_f, 1 << 24)
            train_f.flush()
            os.fsync(train_f.fileno())
    finally:
        Path(val_name).unlink(missing_ok=True)
    progress.end(n_train + n_val)
    return n_train + n_val, n_train, val_bytes


def memmap_tokens(cfg: Config, tokenizer: Tokenizer, origin: str,
                  source: TextSource | None = None) -> tuple[TokenFile, TokenFile, int]:
    """Train and validation TokenFiles of out_dir/tokens.bin (built or reused) and the validation bytes.

    A rebuild writes a temporary file and checks it (long enough for --block_size) before it replaces the
    old tokens.bin, so bad input never destroys a good token file (and an out_dir made for it is removed
    again). The sidecar is removed first and written last: a crash in between leaves a tokens.bin without a
    sidecar, which the next run rebuilds.
    """
    source = source or open_source(cfg.data_path)
    documents = source.is_documents
    out = Path(cfg.out_dir)
    made_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out_dir {out}: cannot create it ({e.strerror}); choose a writable folder") from None
    bin_path, meta_path = out / TOKENS_BIN, out / TOKENS_META
    want = {"format": TOKENS_FORMAT, "dtype": token_dtype(tokenizer.vocab_size),
            "tokenizer_sha256": tokenizer_hash(tokenizer), "source": source.stamp()}
    separator = None
    if documents:  # recorded for a folder only, so that a single file's sidecar stays as it always was
        separator = Separator(tokenizer, origin, source.spec)
        want |= {"val_fraction": cfg.val_fraction, "separator": separator.description}
    meta = _read_meta(meta_path)
    reason = stale_reason(meta, want, bin_path)
    need_val = cfg.eval_interval > 0
    if reason is None:
        assert meta is not None
        n = meta["n_tokens"]
        n_train = meta["n_train"] if documents else train_token_count(n, cfg.val_fraction)
        train = TokenFile(str(bin_path), meta["dtype"], 0, n_train)
        val = TokenFile(str(bin_path), meta["dtype"], n_train, n)
        check_split_lengths(train, val, cfg.block_size, need_val, cfg.data_path)
        if meta.get("n_train") != n_train:  # only --val_fraction changed: the tokens stand, the split moves
            meta = {**meta, "n_train": n_train, "val_fraction": cfg.val_fraction,
                    "val_bytes": _val_bytes(val, tokenizer)}
            _write_meta(meta_path, meta)
        _say(f"data: reusing {bin_path} ({n:,} tokens; its sidecar matches {cfg.data_path} and the tokenizer)")
        return train, val, meta["val_bytes"]

    _say(f"data: {reason}; tokenising {cfg.data_path} into {bin_path}")
    # A build killed outright (SIGKILL, SIGTERM while tokenising) leaves its temporary file; the run that holds
    # the folder now (its lock is taken before the data) is the only one that could be writing one.
    for stale in out.glob(f".{TOKENS_BIN}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{TOKENS_BIN}.", suffix=".tmp", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if documents:
            assert separator is not None
            n, n_train, val_bytes = _write_documents(tokenizer, source, origin, tmp, want["dtype"],
                                                     cfg.val_fraction, separator)
        else:
            n = _write_tokens(tokenizer, cfg.data_path, origin, tmp, want["dtype"])
            n_train = train_token_count(n, cfg.val_fraction)
        train = TokenFile(str(tmp), want["dtype"], 0, n_train)
        val = TokenFile(str(tmp), want["dtype"], n_train, n)
        check_split_lengths(train, val, cfg.block_size, need_val, cfg.data_path)
        if not documents:
            val_bytes = _val_bytes(val, tokenizer)
        meta_path.unlink(missing_ok=True)
        plain_file_mode(tmp)
        os.replace(tmp, bin_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if made_out:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: nothing else was written
        raise
    _write_meta(meta_path, {**want, "n_tokens": n, "n_train": n_train, "val_fraction": cfg.val_fraction,
                            "val_bytes": val_bytes, "tokenizer_kind": tokenizer.kind,
                            "vocab_size": tokenizer.vocab_size})
    return (TokenFile(str(bin_path), want["dtype"], 0, n_train), TokenFile(str(bin_path), want["dtype"], n_train, n),
            val_bytes)


def _val_bytes(val: TokenFile, tokenizer: Tokenizer) -> int:
    lengths = tokenizer.byte_lengths()
    return sum(val_byte_count(part, lengths) for part in val.chunks())


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
