import pytest

from tinyllm.errors import UserError
from tinyllm.tokenizer import CharTokenizer, tokenizer_from_json


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
