"""The token file: streaming tokenisation, memmap batches equal to in-memory ones, the sidecar, resume."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_text, run_cli

from tinyllm import data as D
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.tokenizer import CharTokenizer, split_text

try:
    import tokenizers  # noqa: F401

    HAVE_TOKENIZERS = True
except ImportError:
    HAVE_TOKENIZERS = False
needs_bpe = pytest.mark.skipif(not HAVE_TOKENIZERS, reason="the bpe extra (tokenizers) is not installed")

# Text with multi-byte characters, CRLF and blank lines, so chunk edges land in awkward places.
ODD_TAIL = "Ünïcödé 🙂 text\r\n\r\n  with CJK 日本語 and e\u0301 marks.\n"


def corpus_text(n_words: int = 3000, seed: int = 0) -> str:
    lines = make_text(n_words, seed).splitlines(keepends=True)
    return "".join(line + (ODD_TAIL if i % 7 == 0 else "") for i, line in enumerate(lines))


def cfg_for(path: Path, out: Path, **kw) -> Config:
    base = dict(data_path=str(path), out_dir=str(out), block_size=16, batch_size=4, eval_interval=10)
    return Config(**{**base, **kw})


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(corpus_text(), encoding="utf-8")
    return p


def test_text_chunks_join_to_the_text_and_cut_safely(text_file):
    text = text_file.read_bytes().decode("utf-8")
    pieces = list(D.iter_text_chunks(text_file, chunk_bytes=97))  # cuts inside multi-byte characters
    assert len(pieces) > 100 and "".join(pieces) == text
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert b[0] in " \t\n\r\x0b\x0c" and not a[-1].isspace()
    limited = "".join(D.iter_text_chunks(text_file, chunk_bytes=97, limit_bytes=1000))
    assert len(limited.encode("utf-8")) <= 1000 and text.startswith(limited) and len(limited) > 900


def test_streaming_reports_the_real_offset_of_a_bad_byte(tmp_path):
    p = tmp_path / "bad.txt"
    good = "é" * 100  # 200 bytes of two-byte characters
    p.write_bytes(good.encode() + b"ok \xff tail")
    with pytest.raises(UserError, match=r"invalid byte 0xff at byte offset 203"):
        list(D.iter_text_chunks(p, chunk_bytes=7))  # blocks end mid-character: the held-back byte counts
    with pytest.raises(UserError, match=r"invalid byte 0xff at byte offset 203"):
        D.read_text(p)


@pytest.mark.parametrize("kind", ["char", pytest.param("bpe", marks=needs_bpe)])
def test_memmap_and_in_memory_give_the_same_batches(text_file, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(D, "CHUNK_BYTES", 256)  # many chunks, so chunking is really exercised
    extra = {"tokenizer": kind, "bpe_vocab_size": 300}
    tok_a, train_a, val_a, bpt_a = D.prepare(cfg_for(text_file, tmp_path / "a", **extra), None)
    tok_b, train_b, val_b, bpt_b = D.prepare(cfg_for(text_file, tmp_path / "b", memmap_dataset=True, **extra), None)
    assert isinstance(train_b, D.TokenFile) and isinstance(train_a, torch.Tensor)
    assert tok_a.to_json() == tok_b.to_json()
    assert (len(train_a), len(val_a)) == (len(train_b), len(val_b))
    assert bpt_a == bpt_b > 0
    on_disk = np.fromfile(tmp_path / "b" / D.TOKENS_BIN, dtype=np.uint16)
    assert on_disk.tolist() == torch.cat([train_a, val_a]).tolist()
    for split_a, split_b in ((train_a, train_b), (val_a, val_b)):
        sa, sb = D.BatchSampler(split_a, 16, 4, seed=5), D.BatchSampler(split_b, 16, 4, seed=5)
        for t in (None, 16, 8):
            xa, ya = sa.next(t)
            xb, yb = sb.next(t)
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == xb.dtype == torch.long
    if kind == "char":  # bytes per validation token: exact, from the text itself
        text = text_file.read_bytes().decode("utf-8")
        n_train = len(train_a)
        assert bpt_a == len(text[n_train:].encode("utf-8")) / len(val_a)


def test_sidecar_records_what_the_file_was_made_from(text_file, tmp_path):
    cfg = cfg_for(text_file, tmp_path / "run", memmap_dataset=True)
    tok, train, val, _ = D.prepare(cfg, None)
    meta = json.loads((tmp_path / "run" / D.TOKENS_META).read_text())
    st = text_file.stat()
    assert meta["dtype"] == "uint16" and meta["n_tokens"] == len(train) + len(val)
    assert meta["n_train"] == len(train) and meta["val_fraction"] == 0.1
    assert meta["source"] == {"path": str(text_file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert meta["tokenizer_sha256"] == D.tokenizer_hash(tok)
    assert (tmp_path / "run" / D.TOKENS_BIN).stat().st_size == 2 * meta["n_tokens"]


def test_sidecar_reuse_and_invalidation(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = cfg_for(text_file, out, memmap_dataset=True)
    bin_path = out / D.TOKENS_BIN

    def build(c: Config = cfg, saved: str | None = None) -> str:
        capsys.readouterr()
        D.prepare(c, saved)
        return capsys.readouterr().err

    assert "no usable tokens.bin" in build()
    stamp = bin_path.stat().st_mtime_ns
    assert "reusing" in build() and bin_path.stat().st_mtime_ns == stamp

    # Another tokenizer (here: the vocabulary of a different text, as a resumed checkpoint would bring).
    other = CharTokenizer.from_text(text_file.read_bytes().decode("utf-8") + "§")
    assert "made with another tokenizer" in build(saved=other.to_json())
    assert "made with another tokenizer" in build()  # and back
    # Another file with the same text.
    copy = tmp_path / "copy.txt"
    copy.write_bytes(text_file.read_bytes())
    assert "made from another file" in build(cfg_for(copy, out, memmap_dataset=True))
    assert "made from another file" in build()
    # The same file, edited in place: same size, same characters, a new modification time.
    text_file.write_text(text_file.read_bytes().decode("utf-8").replace("cat", "tac"), encoding="utf-8")
    os.utime(text_file, ns=(stamp + 10**9, stamp + 10**9))
    assert "changed since tokens.bin was made" in build()
    assert "reusing" in build()
    # A damaged token file, a missing sidecar.
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size - 2)
    assert "does not match its sidecar" in build()
    (out / D.TOKENS_META).unlink()
    assert "no usable tokens.bin" in build()
    # Only the split changed: the tokens stand, the boundary moves.
    stamp = bin_path.stat().st_mtime_ns
    assert "reusing" in build(cfg_for(text_file, out, memmap_dataset=True, val_fraction=0.2))
    meta = json.loads((out / D.TOKENS_META).read_text())
    assert bin_path.stat().st_mtime_ns == stamp and meta["val_fraction"] == 0.2
    assert meta["n_train"] == int(meta["n_tokens"] * 0.8)


def test_bad_input_never_replaces_a_good_token_file(text_file, tmp_path):
    out = tmp_path / "run"
    D.prepare(cfg_for(text_file, out, memmap_dataset=True), None)
    before = (out / D.TOKENS_BIN).read_bytes(), (out / D.TOKENS_META).read_text()
    short = tmp_path / "short.txt"
    short.write_text("far too short\n", encoding="utf-8")
    with pytest.raises(UserError, match="needs at least 17"):
        D.prepare(cfg_for(short, out, memmap_dataset=True), None)
    assert ((out / D.TOKENS_BIN).read_bytes(), (out / D.TOKENS_META).read_text()) == before
    assert sorted(p.name for p in out.iterdir()) == [D.TOKENS_BIN, D.TOKENS_META]  # no temp file left


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    p = tmp_path / "wide.txt"
    p.write_text("\n".join("".join(chars[i:i + 50]) + " x" for i in range(0, len(chars), 50)), encoding="utf-8")
    tok, train, val, _ = D.prepare(cfg_for(p, tmp_path / "run", memmap_dataset=True), None)
    assert tok.vocab_size > 2**16 and train.dtype == "uint32"
    mem = D.in_memory_tokens(tok, str(p), "x")
    assert np.fromfile(tmp_path / "run" / D.TOKENS_BIN, dtype=np.uint32).tolist() == mem.tolist()
    assert D.token_dtype(2**16) == "uint16" and D.token_dtype(2**16 + 1) == "uint32"


def test_token_file_is_cheap_to_send_to_workers(text_file, tmp_path):
    _, train, _, _ = D.prepare(cfg_for(text_file, tmp_path / "run", memmap_dataset=True), None)
    blob = pickle.dumps(train)
    assert len(blob) < 500  # a path and three numbers, never the tokens
    again = pickle.loads(blob)
    idx = torch.tensor([[0, 1, 2], [5, 6, 7]])
    assert torch.equal(again.windows(idx), train.windows(idx))


def test_resume_is_bit_identical_with_memmap(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(corpus_text(2500, seed=4), encoding="utf-8")
    common = ["--data_path", data, *TINY, "--memmap_dataset", "--dropout", "0.1", "--lr_decay_steps", "8",
              "--eval_interval", "4", "--checkpoint_interval", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli([*common, "--out_dir", straight, "--max_steps", "8"]) == 0
    assert run_cli([*common, "--out_dir", split, "--max_steps", "4"]) == 0
    assert run_cli(["--out_dir", split, "--resume", "--max_steps", "8", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert b["step"] == 8 and b["config"]["memmap_dataset"] is True
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


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


def test_memmap_and_in_memory_training_end_with_the_same_weights(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(corpus_text(1500, seed=5), encoding="utf-8")
    common = ["--data_path", data, *TINY, "--max_steps", "4", "--eval_interval", "4"]
    assert run_cli([*common, "--out_dir", tmp_path / "mem"]) == 0
    assert run_cli([*common, "--out_dir", tmp_path / "map", "--memmap_dataset"]) == 0
    a, b = load_checkpoint(tmp_path / "mem" / "ckpt.pt"), load_checkpoint(tmp_path / "map" / "ckpt.pt")
    assert a["best_val_loss"] == b["best_val_loss"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("memmap", [False, True])
def test_text_the_tokenizer_cannot_encode_is_a_clear_error(text_file, tmp_path, memmap):
    saved = CharTokenizer.from_text("abc").to_json()  # e.g. a checkpoint trained on other text
    with pytest.raises(UserError, match=r"--data_path .*not in the vocabulary.*the checkpoint's tokenizer"):
        D.prepare(cfg_for(text_file, tmp_path / "run", memmap_dataset=memmap), saved)
    assert not (tmp_path / "run" / D.TOKENS_BIN).exists()
