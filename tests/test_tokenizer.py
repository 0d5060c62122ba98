import random

import pytest

from tinyllm.errors import UserError
from tinyllm.tokenizer import CharTokenizer, split_text, tokenizer_from_json


def test_round_trip_unicode():
    text = "héllo wörld — naïve café ✓\n日本"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text))


def test_json_round_trip():
    tok = CharTokenizer.from_text("abc\ndef ✓")
    again = tokenizer_from_json(tok.to_json())
    assert again.chars == tok.chars
    assert again.encode("fed✓") == tok.encode("fed✓")


def test_unknown_chars_error_lists_them():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError) as e:
        tok.encode("abxyx")
    assert "'x'" in str(e.value) and "'y'" in str(e.value) and "--drop_unknown_chars" in str(e.value)


def test_unknown_chars_dropped_on_request():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(tok.encode("axbyc", drop_unknown=True)) == "abc"


def test_malformed_json():
    with pytest.raises(UserError):
        tokenizer_from_json("{not json")


def test_char_vectorised_paths_match_the_plain_ones():
    """The vectorised vocabulary and encoder that both data paths use agree with the per-character ones."""
    rng = random.Random(0)
    text = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x7FF), rng.randint(0x1F300, 0x1F64F)]))
                   for _ in range(3000))
    tok = CharTokenizer.from_text(text)
    assert CharTokenizer.from_chunks(split_text(text, 100)).chars == tok.chars  # the streaming vocabulary
    assert tok.encode_array(text).tolist() == tok.encode(text)
    probe = text[:50] + "\U0010fffd" + "\u0378" + text[50:80]  # one beyond the largest code point, one inside
    with pytest.raises(UserError, match="not in the vocabulary"):
        tok.encode_array(probe)
    assert tok.encode_array(probe, drop_unknown=True).tolist() == tok.encode(probe, drop_unknown=True)
