"""Tokenizers behind one small interface: encode, decode, vocab_size, to/from JSON (never pickle).

Two kinds, chosen with `--tokenizer`:

* `char`: one token per Unicode character; the vocabulary is the sorted set of characters in the data.
* `bpe`: a byte-level BPE (the GPT-2 scheme) trained with Hugging Face `tokenizers` (the `bpe` extra). Its
  base alphabet is all 256 byte values, so any UTF-8 text encodes with no unknown token. The vocabulary is
  id 0 = the end-of-text token `<|endoftext|>` (EOT_TOKEN), ids 1-256 = the bytes, then the learned merges.
  The text is split into pieces by the GPT-2 regular expression (no normaliser, no prefix space), so
  decode(encode(text)) == text for every string. A literal `<|endoftext|>` in the text is that special
  token: put it between documents to mark where one ends.
  An imported tokenizer (tinyllm.hf_import) may be any byte-level BPE `tokenizer.json`, such as GPT-2's: its
  own layout, pre-tokenizer and special tokens, an end-of-text token of another name (`eot_token`) or none.
  It encodes and decodes as `tokenizers` does (without the post-processor's added BOS/EOS).

Both offer the same methods: `encode(text, drop_unknown=None) -> list[int]` (None: the tokenizer's own
`drop_unknown`, off unless it was built with it), `decode(ids) -> str`,
`vocab_size`, `to_json()`, `kind`, plus `unknown(text)`, `encode_array(text)` (numpy ids, for large data)
and `byte_lengths()` (UTF-8 bytes per token id, for bits per byte). `tokenizer_from_json` restores either
kind from its JSON; a BPE's JSON embeds the whole Hugging Face tokenizer, so that one string (the
checkpoint's `tokenizer` entry or out_dir/tokenizer.json) is all a tokenizer needs.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from tinyllm.errors import UserError

EOT_TOKEN = "<|endoftext|>"
MIN_BPE_VOCAB = 256 + 1  # every byte value, plus the end-of-text token
BPE_EXTRA_HINT = 'pip install -e ".[bpe]"'

# A safe cut point (see safe_cut): ASCII whitespace after a character that is not whitespace. In a str
# pattern \S is exactly `not str.isspace()`, the widest notion of whitespace the GPT-2 pattern could have.
_CUT_RE = re.compile(r"(?<=\S)[ \t\n\r\x0b\x0c]")


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, drop_unknown: bool | None = None) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def stream_decoder(self) -> Callable[[int], str]:
        """A decoder fed one id at a time: the pieces it returns, joined, are decode() of the ids so far."""
        ...

    def to_json(self) -> str: ...

    def unknown(self, text: str) -> list[str]: ...

    def encode_array(self, text: str, drop_unknown: bool | None = None) -> np.ndarray: ...

    def byte_lengths(self) -> np.ndarray: ...


def tokenizer_hash(tok: Tokenizer) -> str:
    """A fingerprint of the whole tokenizer: equal hashes, equal token ids for every text."""
    return hashlib.sha256(tok.to_json().encode("utf-8")).hexdigest()


def safe_cut(text: str, end: int | None = None, start: int = 0) -> int | None:
    """The last index i with start < i < end at which text may be split without changing its tokens, or None.

    Both tokenizers give encode(text[:i]) + encode(text[i:]) == encode(text) when text[i] is ASCII
    whitespace and text[i-1] is not whitespace. For the BPE: the GPT-2 pattern never joins a non-space
    character to the whitespace after it, and a run of whitespace (whose split depends on what follows it)
    stays whole in the right-hand part. Cutting right after a newline would not do: "a \n\nb" is split
    differently from "a \n" + "\nb", and WikiText, for one, ends every line with " \n".
    """
    end = len(text) if end is None else min(end, len(text))
    hi, window = end, 256
    while hi > start + 1:
        lo = max(start + 1, hi - window)
        last = None
        for m in _CUT_RE.finditer(text, lo, hi):
            last = m.start()
        if last is not None:
            return last
        hi, window = lo, window * 4  # look further back, in growing steps: linear in the distance
    return None


def split_text(text: str, size: int) -> list[str]:
    """Split text into pieces of about `size` characters at safe cut points (see safe_cut); a piece is
    longer only where the text offers no cut point."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = safe_cut(text, start + size, start)
        if cut is None:
            m = _CUT_RE.search(text, start + size)
            if m is None:
                break
            cut = m.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of characters in the data."""

    kind = "char"

    def __init__(self, chars: list[str], drop_unknown: bool = False):
        self.chars = list(chars)
        # What encode and encode_array do with characters outside the vocabulary when not told: raise (the
        # default) or drop them (a run given --drop_unknown_chars; not part of the JSON).
        self.drop_unknown = drop_unknown
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # For encode_array: id of every code point up to the largest in the vocabulary (-1 = unknown). At most
        # 0x110000 entries (4.4 MB), and one gather per character instead of a Python dict lookup.
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._lut = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int32)
        self._lut[codes] = np.arange(len(codes), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @classmethod
    def from_chunks(cls, chunks: Iterable[str]) -> CharTokenizer:
        """The same vocabulary as from_text("".join(chunks)), holding one chunk at a time."""
        seen = np.zeros(0x110000, dtype=bool)  # one flag per code point; sorted order comes for free
        for chunk in chunks:
            seen[np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)] = True
        return cls([chr(c) for c in np.flatnonzero(seen)])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that the vocabulary lacks, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def _unknown_error(self, missing: list[str]) -> UserError:
        shown = ", ".join(repr(c) for c in missing[:20])
        return UserError(f"characters not in the vocabulary: {shown}; remove them from the text "
                         "(or pass --drop_unknown_chars to drop them)")

    def encode(self, text: str, drop_unknown: bool | None = None) -> list[int]:
        missing = self.unknown(text)
        if missing and not (self.drop_unknown if drop_unknown is None else drop_unknown):
            raise self._unknown_error(missing)
        return [self.stoi[c] for c in text if c in self.stoi]

    def encode_array(self, text: str, drop_unknown: bool | None = None) -> np.ndarray:
        """encode() as an integer array, vectorised (a table lookup per character, no Python loop)."""
        drop_unknown = self.drop_unknown if drop_unknown is None else drop_unknown
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        lut = self._lut
        if len(lut) and int(codes.max(initial=0)) < len(lut):
            ids = lut[codes]
        else:
            ids = np.full(len(codes), -1, dtype=np.int32)
            inside = codes < len(lut)
            ids[inside] = lut[codes[inside]]
        known = ids >= 0
        if not known.all():
            if not drop_unknown:
                raise self._unknown_error(self.unknown(text))
            ids = ids[known]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def stream_decoder(self) -> Callable[[int], str]:
        return self.chars.__getitem__

    def byte_lengths(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)


def _tokenizers_module() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("--tokenizer bpe needs the Hugging Face `tokenizers` package, which is not installed; "
                        f"install the extra: {BPE_EXTRA_HINT}") from None
    return tokenizers


def _byte_level_chars() -> dict[str, int]:
    """Character -> byte of the byte-level alphabet (the GPT-2 scheme that `tokenizers` ByteLevel uses).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 (controls, space, the
    non-breaking and soft hyphen) are shifted to U+0100 onwards, in byte order, so that every token is a
    string of visible characters.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in visible}
    shifted = (b for b in range(256) if b not in set(visible))
    for n, b in enumerate(shifted):
        table[chr(256 + n)] = b
    return table


def _valid_utf8(text: str) -> str:
    """Lone surrogates (Python's stand-ins for undecodable command-line bytes) are not UTF-8, and
    `tokenizers` refuses them: replace each with U+FFFD. Text read from a UTF-8 file never has any."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _gpt2_pre_tokenizer(hf: Any) -> bool:
    """Whether safe_cut's guarantee holds for this tokenizer: no normaliser, and GPT-2's own pre-tokenizer
    (ByteLevel with its regex and no prefix space). Other splitting rules (Llama 3's regex, a prefix space)
    may join text across such a cut."""
    pre = hf.pre_tokenizer
    return (hf.normalizer is None and type(pre).__name__ == "ByteLevel"
            and getattr(pre, "use_regex", False) is True and getattr(pre, "add_prefix_space", True) is False)


class BPETokenizer:
    """Byte-level BPE over a Hugging Face `tokenizers.Tokenizer`; see the module docstring for the layout."""

    kind = "bpe"

    def __init__(self, hf: Any, eot_token: str | None = EOT_TOKEN):
        self._hf = hf
        self.eot_token = eot_token
        self.eot_id = hf.token_to_id(eot_token) if eot_token is not None else None
        if eot_token is not None and self.eot_id is None:
            raise UserError(f"the BPE tokenizer JSON lacks the end-of-text token {eot_token}; retrain it")
        chars = _byte_level_chars()
        added = set(hf.get_added_tokens_decoder())
        token_bytes = []
        for i in range(hf.get_vocab_size()):
            tok = hf.id_to_token(i)
            if tok is None:
                raise UserError(f"the BPE tokenizer JSON has no token with id {i}; retrain it")
            # As the ByteLevel decoder does: a token made of byte-level characters stands for those bytes;
            # an added token (<|endoftext|> and other special tokens) that is not, for its own text.
            if all(c in chars for c in tok):
                token_bytes.append(bytes(chars[c] for c in tok))
            elif i in added:
                token_bytes.append(tok.encode("utf-8"))
            else:
                raise UserError(f"the BPE tokenizer JSON is not byte-level (token {tok!r}); retrain it")
        self._token_bytes = token_bytes
        # Whether long texts may be cut at safe_cut points and encoded piece by piece (see encode_array).
        self.cut_safe = _gpt2_pre_tokenizer(hf)

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int, source: str = "the training text") -> BPETokenizer:
        """Learn merges from an iterator of text chunks (each is held only while it is counted).

        Chunks should be cut at safe_cut points so that the result equals training on the whole text at
        once. A merge must occur at least twice to be learned; if the text has too few, the requested
        vocabulary cannot be reached and that is an error rather than a silently smaller model.
        """
        if vocab_size < MIN_BPE_VOCAB:
            raise UserError(f"--bpe_vocab_size {vocab_size} is below the byte alphabet: a byte-level BPE needs at "
                            f"least {MIN_BPE_VOCAB} tokens (256 bytes + {EOT_TOKEN}); use a larger value")
        tk = _tokenizers_module()
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT_TOKEN],
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False)
        # `tokenizers` buffers 256 items of the iterator ahead of the trainer: hand it small pieces (cut at
        # safe points, so the counts are unchanged), or a few big chunks would hold the whole text in memory.
        pieces = (piece for chunk in chunks for piece in split_text(chunk, 1 << 16))
        hf.train_from_iterator(pieces, trainer)
        got = hf.get_vocab_size()
        if got < vocab_size:
            raise UserError(f"--bpe_vocab_size {vocab_size} is too large for {source}: only {got - MIN_BPE_VOCAB} "
                            f"merges occur at least twice in it, so it supports at most {got} tokens; use "
                            f"--bpe_vocab_size {got} or less, or more text")
        return cls(hf)

    @classmethod
    def from_json_data(cls, data: dict[str, Any]) -> BPETokenizer:
        tk = _tokenizers_module()
        inner = data.get("tokenizers")
        if not isinstance(inner, dict):
            raise UserError("tokenizer JSON of type 'bpe' lacks its 'tokenizers' object; retrain or pass a valid "
                            "tokenizer.json")
        try:
            hf = tk.Tokenizer.from_str(json.dumps(inner))
        except Exception as e:  # the Rust side raises plain Exception for any malformed field
            raise UserError(f"the BPE tokenizer JSON is malformed ({str(e)[:200]}); retrain or pass a valid "
                            "tokenizer.json") from None
        eot = data.get("eot_token", EOT_TOKEN)
        if eot is not None and not isinstance(eot, str):
            raise UserError("tokenizer JSON of type 'bpe' has an 'eot_token' that is not a string; retrain or pass "
                            "a valid tokenizer.json")
        return cls(hf, eot)

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    def unknown(self, text: str) -> list[str]:
        return []  # every string is made of bytes, and every byte is a token

    def encode(self, text: str, drop_unknown: bool | None = None) -> list[int]:
        """Token ids of `text` (drop_unknown is accepted for the common interface: nothing is unknown)."""
        return self._hf.encode(_valid_utf8(text), add_special_tokens=False).ids

    def encode_array(self, text: str, drop_unknown: bool | None = None) -> np.ndarray:
        """encode() as an int64 array; long texts are cut at safe points and encoded in parallel (in one
        piece where the pre-tokenizer is not GPT-2's, for which those points are not known to be safe)."""
        text = _valid_utf8(text)
        pieces = split_text(text, 1 << 14) if self.cut_safe else [text]
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here needs.
        batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        out = [np.asarray(e.ids, dtype=np.int64) for e in batch(pieces, add_special_tokens=False)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, exactly as it was encoded.

        Bytes that are not valid UTF-8 (only a model's output can produce them) become U+FFFD, except an
        incomplete character at the very end, which is left out: the next tokens may complete it, so text
        decoded token by token can be printed as it grows.
        """
        # An id past the vocabulary (an imported model's padded embedding can produce one) decodes to nothing,
        # as in `tokenizers`.
        n = len(self._token_bytes)
        data = b"".join(self._token_bytes[i] for i in ids if i < n)
        return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)

    def stream_decoder(self) -> Callable[[int], str]:
        """decode() one id at a time: an incomplete character is held until the ids that complete it arrive,
        so a stream of any length costs the same per token."""
        decoder, table = codecs.getincrementaldecoder("utf-8")("replace"), self._token_bytes
        return lambda i: decoder.decode(table[i]) if i < len(table) else ""

    def byte_lengths(self) -> np.ndarray:
        return np.array([len(b) for b in self._token_bytes], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps({"type": "bpe", "eot_token": self.eot_token,
                           "tokenizers": json.loads(self._hf.to_str())}, ensure_ascii=False)


def tokenizer_from_json(text: str, drop_unknown: bool = False) -> CharTokenizer | BPETokenizer:
    """The tokenizer of a JSON string; `drop_unknown`: a char tokenizer drops characters outside its vocabulary
    instead of raising (a BPE has none)."""
    try:
        data = json.loads(text)
        kind = data["type"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError("tokenizer JSON is malformed; retrain or pass a valid tokenizer.json") from None
    if kind == "char":
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise UserError("tokenizer JSON of type 'char' needs a list of single characters; retrain or pass a "
                            "valid tokenizer.json")
        return CharTokenizer(chars, drop_unknown)
    if kind == "bpe":
        return BPETokenizer.from_json_data(data)
    raise UserError(f"unknown tokenizer type '{kind}' in tokenizer JSON")
