"""The byte-level BPE tokenizer: round trips, the special token, JSON, chunking, errors, and BPE runs."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
from conftest import TINY, make_text, run_cli

from tinyllm.checkpoint import load_checkpoint
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics
from tinyllm.tokenizer import (
    EOT_TOKEN,
    MIN_BPE_VOCAB,
    BPETokenizer,
    CharTokenizer,
    _byte_level_chars,
    safe_cut,
    split_text,
    tokenizer_from_json,
    tokenizer_hash,
)
from tinyllm.wikitext import clean_file

tokenizers = pytest.importorskip("tokenizers", reason="the bpe extra (tokenizers) is not installed")

REAL_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2_valid.tokens.txt"

HARD_STRINGS = [
    "",
    "plain ascii, with punctuation: (a) [b] {c}!?",
    "emoji 🙂🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
    "CJK 日本語のテキスト 中文 한국어",
    "combining e\u0301 a\u0308 n\u0303 and Z\u0351\u0352\u0353 stacked",
    "lines\nand\r\nwindows\rmac\n\n\n  indented\ttab\x0bvt\x0cff",
    "controls \x00\x01\x1f\x7f and latin-1 \xa0\xad\xff",
    "rtl שלום مرحبا and math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    f"a literal {EOT_TOKEN} between documents{EOT_TOKEN}",
    "   leading and trailing spaces   ",
    "don't we'll they're it's 'quoted' 1,000.5 3.14159",
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    text = make_text(4000, seed=1) + "\n".join(HARD_STRINGS[1:4])
    return BPETokenizer.train([text], 340)


def random_text(rng: random.Random, n: int) -> str:
    """Random code points from every plane (never surrogates, which are not text)."""
    out = []
    for _ in range(n):
        hi = rng.choice([0x7F, 0x7FF, 0xFFFF, 0x10FFFF])
        c = rng.randint(0, hi)
        out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")
    return "".join(out)


def test_round_trip_arbitrary_unicode(tok):
    for s in HARD_STRINGS:
        ids = tok.encode(s)
        assert tok.decode(ids) == s, s
        assert all(0 <= i < tok.vocab_size for i in ids)
    rng = random.Random(0)
    for _ in range(200):
        s = random_text(rng, rng.randint(1, 40))
        assert tok.decode(tok.encode(s)) == s


def test_vocabulary_layout_and_end_of_text_token(tok):
    assert tok.vocab_size == 340
    assert tok.eot_id == 0
    assert tok.decode([tok.eot_id]) == EOT_TOKEN
    ids = tok.encode(f"ab{EOT_TOKEN}cd")
    assert ids.count(tok.eot_id) == 1  # the literal is the one special token, not 13 characters
    assert tok.unknown("anything 🙂") == []
    # ids 1..256 are single bytes, so their byte lengths are 1; the special token is 13 bytes of text
    lengths = tok.byte_lengths()
    assert lengths[0] == len(EOT_TOKEN) and all(lengths[1:257] == 1) and all(lengths[257:] >= 2)


def test_byte_table_matches_tokenizers(tok):
    table = _byte_level_chars()
    assert sorted(table) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert sorted(table.values()) == list(range(256))
    # Where a token is whole UTF-8, our decoding agrees with the Hugging Face decoder.
    agree = 0
    for i in range(1, tok.vocab_size):
        raw = tok._token_bytes[i]
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tok.decode([i]) == tok._hf.decode([i]), i
        agree += 1
    assert agree > 200


def test_decode_is_clean_when_streamed(tok):
    """Decoding a growing token list never shows a half character: each result extends the last one."""
    s = "naïve café 🙂 日本 " * 3
    ids = tok.encode(s)
    shown = ""
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k])
        assert text.startswith(shown) and "\ufffd" not in text
        shown = text
    assert shown == s
    # Bytes a model made up that are not UTF-8 become U+FFFD instead of raising.
    lone_continuation = next(i for i in range(1, 257) if tok._token_bytes[i] == b"\x80")
    assert tok.decode([lone_continuation] + tok.encode("ok")) == "\ufffdok"


def test_stream_decoder_pieces_join_to_decode(tok):
    """Fed one id at a time, the stream decoder's pieces join to decode() of the ids so far, for any ids: split
    characters, made-up bytes that are not UTF-8, and ids past the vocabulary alike."""
    rng = random.Random(3)
    text_ids = tok.encode("naïve café 🙂 日本 ")
    for trial in range(50):
        ids = text_ids + [rng.randrange(tok.vocab_size + 3) for _ in range(40)] if trial else text_ids
        decode, joined = tok.stream_decoder(), ""
        for k, i in enumerate(ids, 1):
            joined += decode(i)
            assert joined == tok.decode(ids[:k]), (trial, k)
    char = CharTokenizer(list("\nab€🙂"))
    decode = char.stream_decoder()
    assert "".join(decode(i) for i in [3, 1, 4, 0]) == char.decode([3, 1, 4, 0]) == "€a🙂\n"


def test_json_round_trip_embeds_everything(tok):
    text = tok.to_json()
    data = json.loads(text)
    assert data["type"] == "bpe" and data["eot_token"] == EOT_TOKEN
    assert data["tokenizers"]["model"]["type"] == "BPE"  # the whole Hugging Face tokenizer is inside
    again = tokenizer_from_json(text)
    assert isinstance(again, BPETokenizer) and again.to_json() == text
    assert tokenizer_hash(again) == tokenizer_hash(tok)
    for s in HARD_STRINGS:
        assert again.encode(s) == tok.encode(s)


def test_malformed_bpe_json():
    with pytest.raises(UserError, match="lacks its 'tokenizers' object"):
        tokenizer_from_json(json.dumps({"type": "bpe"}))
    with pytest.raises(UserError, match="malformed"):
        tokenizer_from_json(json.dumps({"type": "bpe", "tokenizers": {"model": 3}}))


def test_safe_cuts_never_change_the_tokens(tok):
    """The chunking rule the streaming paths rely on, tried on strings made of the awkward characters."""
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    alphabet = spaces + 3 * (list("ab.'s1-é日🙂") + ["\u0301", "\u200b"])
    rng = random.Random(1)
    cuts = 0
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 14)))
        whole = tok.encode(s)
        found, j = [], safe_cut(s)
        while j is not None:
            assert tok.encode(s[:j]) + tok.encode(s[j:]) == whole, (s, j)
            found.append(j)
            j = safe_cut(s, j)
        # every cut point is found: ASCII whitespace after a character that is not whitespace
        rule = [j for j in range(1, len(s)) if s[j] in " \t\n\r\x0b\x0c" and not s[j - 1].isspace()]
        assert sorted(found) == rule, s
        cuts += len(found)
    assert cuts > 1000


def test_chunked_training_and_encoding_equal_whole_text():
    text = make_text(6000, seed=2)
    pieces = split_text(text, 500)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = BPETokenizer.train([text], 300)
    chunked = BPETokenizer.train(iter(pieces), 300)
    assert chunked.to_json() == whole.to_json()
    assert whole.encode_array(text).tolist() == whole.encode(text)


def test_vocab_size_bounds():
    with pytest.raises(UserError, match=f"below the byte alphabet.*at least {MIN_BPE_VOCAB}"):
        BPETokenizer.train(["some text"], 256)
    with pytest.raises(UserError, match="too large for the text.*use --bpe_vocab_size 2[0-9][0-9] or less"):
        BPETokenizer.train(["tiny tiny text text"], 5000, source="the text")


def test_missing_tokenizers_names_the_extra(monkeypatch, corpus, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(UserError, match=r'pip install -e "\.\[bpe\]"'):
        BPETokenizer.train(["text"], 300)
    code = run_cli(["--data_path", corpus, "--out_dir", tmp_path / "run", *TINY, "--tokenizer", "bpe",
                    "--bpe_vocab_size", "300", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install -e ".[bpe]"' in err and "Traceback" not in err


def test_bpe_run_restores_tokenizer_from_the_checkpoint_alone(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(make_text(6000, seed=3), encoding="utf-8")  # ASCII: each token's bytes are whole text
    out = tmp_path / "run"
    args = ["--data_path", data, "--out_dir", out, *TINY, "--tokenizer", "bpe", "--bpe_vocab_size", "300",
            "--max_steps", "6", "--eval_interval", "6", "--sample_interval", "6", "--sample_chars", "12"]
    assert run_cli(args) == 0
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["config"]["tokenizer"] == "bpe" and ckpt["model_args"]["vocab_size"] == 300
    tok = tokenizer_from_json(ckpt["tokenizer"])
    assert tok.kind == "bpe" and (out / "tokenizer.json").read_text(encoding="utf-8") == ckpt["tokenizer"]

    # val_bpb = val_loss / ln 2 / (bytes per validation token), counted here by decoding the split.
    ids = tok.encode(data.read_text(encoding="utf-8"))
    val = ids[int(len(ids) * 0.9):]
    bytes_per_token = len(tok.decode(val).encode("utf-8")) / len(val)
    row = next(r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r)
    assert row["val_bpb"] == pytest.approx(row["val_loss"] / math.log(2) / bytes_per_token, rel=1e-9)
    assert bytes_per_token > 2  # merges happened: a token is more than one character

    # Neither the data file nor tokenizer.json is needed to sample: the checkpoint carries the tokenizer.
    data.unlink()
    (out / "tokenizer.json").unlink()
    capsys.readouterr()
    assert run_cli(["--out_dir", out, "--generate_only", "--prompt", "The cat 🙂", "--sample_chars", "5"]) == 0
    assert capsys.readouterr().out.startswith("The cat 🙂")


@pytest.mark.parametrize("size, needle", [("100", "--bpe_vocab_size must be at least 257"),
                                          ("100000", "--bpe_vocab_size 100000 is too large for the training part")])
def test_bad_bpe_vocab_size_exits_2(corpus, tmp_path, capsys, size, needle):
    code = run_cli(["--data_path", corpus, "--out_dir", tmp_path / "run", *TINY, "--tokenizer", "bpe",
                    "--bpe_vocab_size", size, "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_real_wikitext(tmp_path):
    if not REAL_VALID.is_file():
        pytest.skip(f"real WikiText-2 file not available at {REAL_VALID}")
    clean = tmp_path / "valid.txt"
    clean_file(REAL_VALID, clean)
    text = clean.read_text(encoding="utf-8")
    tok = BPETokenizer.train(iter(split_text(text, 1 << 16)), 2048)
    ids = tok.encode_array(text)
    assert tok.decode(ids.tolist()) == text
    # English prose with 2048 tokens: several bytes per token (a char tokenizer has about 1).
    assert len(text.encode("utf-8")) / len(ids) > 3.0
