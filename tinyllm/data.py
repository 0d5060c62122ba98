"""Text -> token ids -> random-window batches, with samplers whose state can be saved and restored.

Two ways to hold the tokens:

* in memory (the default): the file is read and tokenised at start, into an int16/int32 tensor;
* `--memmap_dataset`: tokenised once into out_dir/tokens.bin (uint16 when the vocabulary fits, else
  uint32) with a JSON sidecar, out_dir/tokens.bin.json, that records what the file was made from. Later
  runs reuse it while the sidecar matches and rebuild it, saying why, when not. Tokenising streams the text
  in chunks, so neither the text nor the token list is ever held whole; batches are windows read through
  np.memmap.

Both give the same token ids, hence the same batches for the same seed: the text is cut into chunks only
at points where a cut cannot change the tokens (tinyllm.tokenizer.safe_cut: before ASCII whitespace that
follows a non-space character, preferably at a line end), so chunk-by-chunk tokenisation equals
tokenising the whole text at once, for the char and the BPE tokenizer alike.

Two ways to draw batches:

* `BatchSampler` (the default, `--dataloader_workers 0`): in the training process, with a generator of its
  own whose state is the sampler's whole state.
* `LoaderSampler` (`--dataloader_workers N`): a torch DataLoader whose N worker processes build the
  batches ahead of the training step (pinned memory on CUDA). Batch k of the stream is a pure function of
  (seed, k), so the stream is the same for every N, and the state saved for resume is just k.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    safe_cut,
    split_text,
    tokenizer_from_json,
    tokenizer_hash,
)

TOKENS_BIN = "tokens.bin"
TOKENS_META = "tokens.bin.json"
TOKENS_FORMAT = 1
CHUNK_BYTES = 1 << 22  # text read and tokenised per step of the streaming passes (4 MiB)


# --- reading text --------------------------------------------------------------------------------------------


def check_text_file(path: str | Path, flag: str = "--data_path") -> Path:
    """The path of a non-empty regular file, or a UserError saying what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: file not found: {p}; pass the path of a UTF-8 text file")
    if p.is_dir():
        raise UserError(f"{flag}: {p} is a directory; pass the path of a UTF-8 text file inside it")
    if p.stat().st_size == 0:
        raise UserError(f"{flag}: {p} is empty; give it some text to learn from")
    return p


def _not_utf8(p: Path, flag: str, offset: int, byte: int) -> UserError:
    return UserError(f"{flag}: {p} is not UTF-8 (invalid byte 0x{byte:02x} at byte offset {offset}); "
                     "convert it, e.g. `iconv -f latin1 -t utf-8`")


def read_text(path: str | Path, flag: str = "--data_path") -> str:
    """Read a UTF-8 file, turning every way it can be unusable into a clear UserError."""
    p = check_text_file(path, flag)
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(p, flag, e.start, raw[e.start]) from None


def iter_text_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES, limit_bytes: int | None = None,
                     flag: str = "--data_path") -> Iterator[str]:
    """The file's text in pieces of about `chunk_bytes`, each cut at a safe point (see the module docstring):
    "".join(pieces) == read_text(path), holding one piece at a time. With `limit_bytes`, only about the
    first `limit_bytes` bytes (the last piece is cut there, at a character boundary)."""
    p = check_text_file(path, flag)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry, offset, emitted = "", 0, 0
    with open(p, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            try:
                text = carry + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder held back from the previous block.
                held = len(e.object) - len(block)
                raise _not_utf8(p, flag, offset - held + e.start, e.object[e.start]) from None
            offset += len(block)
            # The carried text has no cut point inside it, so only the new part needs searching.
            cut = safe_cut(text, start=max(len(carry) - 1, 0)) if block else len(text)
            if cut is None:  # no whitespace in this block at all: read on (memory grows with such a stretch)
                carry = text
                continue
            piece, carry = text[:cut], text[cut:]
            if limit_bytes is not None:
                size = len(piece.encode("utf-8"))
                if emitted + size >= limit_bytes:
                    yield piece.encode("utf-8")[: limit_bytes - emitted].decode("utf-8", "ignore")
                    return
                emitted += size
            if piece:
                yield piece
            if not block:
                return


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


# --- the tokenizer of a run ------------------------------------------------------------------------------


def build_tokenizer(cfg: Config, saved: str | None) -> tuple[Tokenizer, str]:
    """The run's tokenizer and where it came from (for error messages).

    On resume the checkpoint's tokenizer is used as it is; else `--tokenizer_path` is loaded; else a new one
    is built by streaming `--data_path`: the char vocabulary from the whole file (so validation never meets
    an unknown character), the BPE merges from the training part only (the first 1 - val_fraction of its
    bytes), so that nothing about the validation text leaks into the tokenizer.
    """
    if saved:
        return tokenizer_from_json(saved), "the checkpoint's tokenizer"
    if cfg.tokenizer_path:
        return load_tokenizer_file(cfg), f"the tokenizer in --tokenizer_path {cfg.tokenizer_path}"
    if cfg.tokenizer == "bpe":
        size = check_text_file(cfg.data_path).stat().st_size
        limit = max(1, int(size * (1.0 - cfg.val_fraction)))
        chunks = iter_text_chunks(cfg.data_path, limit_bytes=limit)
        tok = BPETokenizer.train(chunks, cfg.bpe_vocab_size, source=f"the training part of {cfg.data_path}")
        return tok, "the BPE tokenizer"
    return CharTokenizer.from_chunks(iter_text_chunks(cfg.data_path)), "the character vocabulary"


def load_tokenizer_file(cfg: Config) -> Tokenizer:
    p = Path(cfg.tokenizer_path)
    if not p.is_file():
        raise UserError(f"--tokenizer_path: file not found: {p}; pass a tokenizer.json written by an earlier run")
    try:
        tok = tokenizer_from_json(p.read_text(encoding="utf-8"))
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


def encode_chunks(tokenizer: Tokenizer, chunks: Iterator[str], origin: str, source: str) -> Iterator[np.ndarray]:
    """Token ids of each chunk; a character the vocabulary lacks is an error naming the data file."""
    for chunk in chunks:
        try:
            yield tokenizer.encode_array(chunk)
        except UserError as e:
            raise UserError(f"--data_path {source}: {e} ({origin} was built from other text; use the data it "
                            "was made for, or build a new tokenizer)") from None


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


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def _source_stamp(path: str) -> dict[str, Any]:
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
    if old.get("path") != new["path"]:
        return f"{TOKENS_BIN} was made from another file ({old.get('path')})"
    if old.get("size") != new["size"] or old.get("mtime_ns") != new["mtime_ns"]:
        return f"{new['path']} changed since {TOKENS_BIN} was made (size or modification time)"
    itemsize = np.dtype(meta.get("dtype", "uint16")).itemsize
    if meta.get("dtype") != want["dtype"] or bin_path.stat().st_size != meta.get("n_tokens", -1) * itemsize:
        return f"{TOKENS_BIN} does not match its sidecar (incomplete or damaged)"
    return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_tokens(tokenizer: Tokenizer, path: str, origin: str, dest: Path, dtype: str) -> int:
    """Stream the text of `path` through the tokenizer into the binary file `dest`; returns the token count.
    A progress line every 10 s, since a multi-GB file takes minutes."""
    total, done, n = Path(path).stat().st_size, 0, 0

    def counted(chunks: Iterator[str]) -> Iterator[str]:
        nonlocal done
        for chunk in chunks:
            done += len(chunk.encode("utf-8"))
            yield chunk

    t0 = t_report = time.perf_counter()
    with open(dest, "wb") as f:
        for ids in encode_chunks(tokenizer, counted(iter_text_chunks(path)), origin, path):
            f.write(memoryview(np.ascontiguousarray(ids.astype(dtype))))
            n += len(ids)
            now = time.perf_counter()
            if now - t_report >= 10:
                _say(f"data: tokenised {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB "
                     f"({done / 2**20 / (now - t0):.1f} MiB/s)")
                t_report = now
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    _say(f"data: tokenised {total / 2**20:,.1f} MiB into {n:,} tokens in {dt:.1f} s "
         f"({total / 2**20 / max(dt, 1e-9):.1f} MiB/s)")
    return n


def memmap_tokens(cfg: Config, tokenizer: Tokenizer, origin: str) -> tuple[TokenFile, TokenFile, int]:
    """Train and validation TokenFiles of out_dir/tokens.bin (built or reused) and the validation bytes.

    A rebuild writes a temporary file and checks it (long enough for --block_size) before it replaces the
    old tokens.bin, so bad input never destroys a good token file. The sidecar is removed first and written
    last: a crash in between leaves a tokens.bin without a sidecar, which the next run rebuilds.
    """
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out_dir {out}: cannot create it ({e.strerror}); choose a writable folder") from None
    bin_path, meta_path = out / TOKENS_BIN, out / TOKENS_META
    want = {"format": TOKENS_FORMAT, "dtype": token_dtype(tokenizer.vocab_size),
            "tokenizer_sha256": tokenizer_hash(tokenizer), "source": _source_stamp(cfg.data_path)}
    meta = _read_meta(meta_path)
    reason = stale_reason(meta, want, bin_path)
    need_val = cfg.eval_interval > 0
    if reason is None:
        assert meta is not None
        n = meta["n_tokens"]
        n_train = train_token_count(n, cfg.val_fraction)
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{TOKENS_BIN}.", suffix=".tmp", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        n = _write_tokens(tokenizer, cfg.data_path, origin, tmp, want["dtype"])
        n_train = train_token_count(n, cfg.val_fraction)
        train = TokenFile(str(tmp), want["dtype"], 0, n_train)
        val = TokenFile(str(tmp), want["dtype"], n_train, n)
        check_split_lengths(train, val, cfg.block_size, need_val, cfg.data_path)
        val_bytes = _val_bytes(val, tokenizer)
        meta_path.unlink(missing_ok=True)
        os.replace(tmp, bin_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    from tinyllm.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


# --- everything a run needs ------------------------------------------------------------------------------


def prepare(cfg: Config, saved_tokenizer: str | None) -> tuple[Tokenizer, Any, Any, float]:
    """(tokenizer, train tokens, validation tokens, UTF-8 bytes per validation token).

    The token holders are tensors (in memory) or TokenFiles (--memmap_dataset); samplers take either. The
    bytes per token turn the validation loss into bits per byte (val_bpb), which compares across tokenizers.
    """
    tokenizer, origin = build_tokenizer(cfg, saved_tokenizer)
    if cfg.memmap_dataset:
        train, val, val_bytes = memmap_tokens(cfg, tokenizer, origin)
    else:
        ids = in_memory_tokens(tokenizer, cfg.data_path, origin)
        train, val = split_ids(ids, cfg.val_fraction)
        check_split_lengths(train, val, cfg.block_size, need_val=cfg.eval_interval > 0, source=cfg.data_path)
        val_bytes = val_byte_count(val, tokenizer.byte_lengths()) if len(val) else 0
    return tokenizer, train, val, (val_bytes / len(val) if len(val) else 0.0)


def gather_windows(data: Any, index: torch.Tensor) -> torch.Tensor:
    """data[index] as int64, for a token tensor or a TokenFile."""
    if isinstance(data, TokenFile):
        return data.windows(index)
    return data[index].long()


@dataclass
class BatchSampler:
    """Uniformly random windows of block_size+1 tokens, drawn with a generator of its own.

    Owning the generator (instead of using the global RNG) is what makes resume exact: the
    generator's state is the sampler's whole state, and evaluation or sampling never disturb it.
    """

    data: Any  # a token tensor or a TokenFile
    block_size: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        # Windows are gathered with one indexing op: offsets are a fixed arange added to the starts.
        self._offsets = torch.arange(self.block_size + 1)

    def next(self, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (inputs, targets); `block_size` shortens the windows (the curriculum uses it)."""
        t = block_size or self.block_size
        hi = len(self.data) - t
        starts = torch.randint(hi, (self.batch_size,), generator=self.generator)
        windows = gather_windows(self.data, starts[:, None] + self._offsets[: t + 1])
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if "generator" not in state:
            raise UserError("--dataloader_workers: this checkpoint was trained with DataLoader workers; resume it "
                            "with --dataloader_workers 1 or more (any number continues the same batches)")
        self.generator.set_state(state["generator"])


def curriculum_sizes(start: int, final: int) -> list[int]:
    """The discrete training block sizes of a curriculum: start, 2*start, 4*start, ... below final, then final.
    Few distinct shapes keep torch.compile from recompiling at every step."""
    sizes = []
    size = start
    while size < final:
        sizes.append(size)
        size *= 2
    return sizes + [final]


def curriculum_block_size(step: int, start: int, final: int, steps: int) -> int:
    """Training block size at `step`: the smaller sizes share the first `steps` steps equally, then `final`."""
    sizes = curriculum_sizes(start, final)
    if step >= steps or len(sizes) == 1:
        return final
    return sizes[step * (len(sizes) - 1) // steps]


# --- batches from DataLoader workers ---------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for batch `index` of the stream seeded with `seed`."""
    state = np.random.SeedSequence([seed % 2**64, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class WindowBatches(torch.utils.data.Dataset):
    """Item k is batch k: batch_size random windows of block_size+1 tokens, drawn with a generator seeded
    by (seed, k) alone. Any worker can therefore make any batch, and the stream does not depend on how many
    workers there are, or on which of them made which batch."""

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int):
        self.data, self.block_size, self.batch_size, self.seed = data, block_size, batch_size, seed
        self._offsets = torch.arange(block_size + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch_seed(self.seed, index))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=gen)
        windows = gather_windows(self.data, starts[:, None] + self._offsets)
        return windows[:, :-1], windows[:, 1:]


class _CountFrom(torch.utils.data.Sampler):
    """Batch indices start, start+1, ... without end (the loop decides when training stops)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id, base_seed drawn from the loader's own generator
    # (seeded from --seed): pass the same seed on to numpy and random, so a worker is reproducible whatever
    # it draws. The batches themselves do not depend on it (see WindowBatches).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def _quiet_tokenizers_fork() -> Iterator[None]:
    """`tokenizers` prints a warning in every forked child once it has used its thread pool, unless
    TOKENIZERS_PARALLELISM is set. The workers never tokenize: set it while they are forked, then restore."""
    had = "TOKENIZERS_PARALLELISM" in os.environ
    if not had:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if not had:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


class LoaderSampler:
    """Training batches from a torch DataLoader with `workers` processes; same interface as BatchSampler.

    The state is the index of the next batch to hand out: batches the workers made ahead of time but the
    loop never took are simply made again after a resume. Its global-RNG use is nil: the loader gets a
    generator of its own for the workers' base seed.
    """

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int, workers: int,
                 pin_memory: bool = False):
        self.dataset = WindowBatches(data, block_size, batch_size, seed)
        self.block_size, self.seed, self.workers, self.pin_memory = block_size, seed, workers, pin_memory
        self.next_index = 0
        self._it: Iterator | None = None

    def _start(self) -> Iterator:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=_CountFrom(self.next_index), num_workers=self.workers,
            pin_memory=self.pin_memory, worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed % 2**63))
        with _quiet_tokenizers_fork():
            return iter(loader)

    def next(self, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (inputs, targets); a `block_size` below the full one keeps the first tokens of each
        window (the curriculum uses it)."""
        if self._it is None:
            self._it = self._start()
        x, y = next(self._it)
        self.next_index += 1
        if block_size and block_size < self.block_size:
            x, y = x[:, :block_size], y[:, :block_size]
        return x, y

    def state_dict(self) -> dict:
        return {"kind": "dataloader", "seed": self.seed, "next_index": self.next_index}

    def load_state_dict(self, state: dict) -> None:
        if "next_index" not in state:
            raise UserError("--dataloader_workers: this checkpoint was trained with --dataloader_workers 0 (batches "
                            "drawn in the training process); resume it with --dataloader_workers 0")
        self.close()
        self.next_index = int(state["next_index"])

    def close(self) -> None:
        """Stop the workers (they also stop when the sampler is garbage-collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def make_train_sampler(data: Any, cfg: Config, seed: int, device: torch.device) -> BatchSampler | LoaderSampler:
    """The training batch sampler that --dataloader_workers asks for."""
    if cfg.dataloader_workers == 0:
        return BatchSampler(data, cfg.block_size, cfg.batch_size, seed=seed)
    return LoaderSampler(data, cfg.block_size, cfg.batch_size, seed, cfg.dataloader_workers,
                         pin_memory=device.type == "cuda")


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move (x, y) to the device. On CUDA the copy comes from pinned memory and does not block, so the host
    can prepare the next step while it runs (DataLoader batches arrive pinned already)."""
    if device.type != "cuda":
        return batch[0].to(device), batch[1].to(device)
    return tuple(t.to(device, non_blocking=True) if t.is_pinned() else t.pin_memory().to(device, non_blocking=True)
                 for t in batch)  # type: ignore[return-value]
