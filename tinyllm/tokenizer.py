"""Tokenizers behind one small interface: encode, decode, vocab_size, to/from JSON (never pickle)."""

from __future__ import annotations

import json
from typing import Protocol

from tinyllm.errors import UserError


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_json(self) -> str: ...


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of characters in the data."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that the vocabulary lacks, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def encode(self, text: str, drop_unknown: bool = False) -> list[int]:
        missing = self.unknown(text)
        if missing and not drop_unknown:
            shown = ", ".join(repr(c) for c in missing[:20])
            raise UserError(f"characters not in the vocabulary: {shown}; remove them from the text "
                            "(or pass --drop_unknown_chars to drop them)")
        return [self.stoi[c] for c in text if c in self.stoi]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)


def tokenizer_from_json(text: str) -> CharTokenizer:
    try:
        data = json.loads(text)
        kind = data["type"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError("tokenizer JSON is malformed; retrain or pass a valid tokenizer.json") from None
    if kind == "char":
        return CharTokenizer(data["chars"])
    raise UserError(f"unknown tokenizer type '{kind}' in tokenizer JSON")
