"""Token ids in memory and in the token file: the split, streaming tokenisation, memmap batches equal to
in-memory ones, the sidecar, resume."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, corpus_text, run_cli

from tinyllm.batches import BatchSampler
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.data import prepare
from tinyllm.errors import UserError
from tinyllm.tokenizer import CharTokenizer, tokenizer_hash
from tinyllm.tokens import (
    TOKENS_BIN,
    TOKENS_META,
    TokenFile,
    check_split_lengths,
    in_memory_tokens,
    split_ids,
    token_dtype,
)

try:
    import tokenizers  # noqa: F401

    HAVE_TOKENIZERS = True
except ImportError:
    HAVE_TOKENIZERS = False
needs_bpe = pytest.mark.skipif(not HAVE_TOKENIZERS, reason="the bpe extra (tokenizers) is not installed")


def cfg_for(path: Path, out: Path, **kw) -> Config:
    base = dict(data_path=str(path), out_dir=str(out), block_size=16, batch_size=4, eval_interval=10)
    return Config(**{**base, **kw})


def test_split_takes_the_end_for_validation():
    ids = torch.arange(100)
    train, val = split_ids(ids, 0.1)
    assert train.tolist() == list(range(90))
    assert val.tolist() == list(range(90, 100))


def test_split_too_short():
    with pytest.raises(UserError, match="--block_size 16 needs at least 17"):
        check_split_lengths(torch.arange(100), torch.arange(10), 16, need_val=True, source="x")
    check_split_lengths(torch.arange(100), torch.arange(10), 16, need_val=False, source="x")


@pytest.mark.parametrize("kind", ["char", pytest.param("bpe", marks=needs_bpe)])
def test_memmap_and_in_memory_give_the_same_batches(text_file, tmp_path, monkeypatch, kind):
    monkeypatch.setattr("tinyllm.tokens.CHUNK_BYTES", 256)  # many chunks, so chunking is really exercised
    extra = {"tokenizer": kind, "bpe_vocab_size": 300}
    tok_a, train_a, val_a, bpt_a = prepare(cfg_for(text_file, tmp_path / "a", **extra), None)
    tok_b, train_b, val_b, bpt_b = prepare(cfg_for(text_file, tmp_path / "b", memmap_dataset=True, **extra), None)
    assert isinstance(train_b, TokenFile) and isinstance(train_a, torch.Tensor)
    assert tok_a.to_json() == tok_b.to_json()
    assert (len(train_a), len(val_a)) == (len(train_b), len(val_b))
    assert bpt_a == bpt_b > 0
    on_disk = np.fromfile(tmp_path / "b" / TOKENS_BIN, dtype=np.uint16)
    assert on_disk.tolist() == torch.cat([train_a, val_a]).tolist()
    for split_a, split_b in ((train_a, train_b), (val_a, val_b)):
        sa, sb = BatchSampler(split_a, 16, 4, seed=5), BatchSampler(split_b, 16, 4, seed=5)
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
    tok, train, val, _ = prepare(cfg, None)
    meta = json.loads((tmp_path / "run" / TOKENS_META).read_text())
    st = text_file.stat()
    assert meta["dtype"] == "uint16" and meta["n_tokens"] == len(train) + len(val)
    assert meta["n_train"] == len(train) and meta["val_fraction"] == 0.1
    assert meta["source"] == {"path": str(text_file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert meta["tokenizer_sha256"] == tokenizer_hash(tok)
    assert (tmp_path / "run" / TOKENS_BIN).stat().st_size == 2 * meta["n_tokens"]


def test_sidecar_reuse_and_invalidation(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = cfg_for(text_file, out, memmap_dataset=True)
    bin_path = out / TOKENS_BIN

    def build(c: Config = cfg, saved: str | None = None) -> str:
        capsys.readouterr()
        prepare(c, saved)
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
    (out / TOKENS_META).unlink()
    assert "no usable tokens.bin" in build()
    # Only the split changed: the tokens stand, the boundary moves.
    stamp = bin_path.stat().st_mtime_ns
    assert "reusing" in build(cfg_for(text_file, out, memmap_dataset=True, val_fraction=0.2))
    meta = json.loads((out / TOKENS_META).read_text())
    assert bin_path.stat().st_mtime_ns == stamp and meta["val_fraction"] == 0.2
    assert meta["n_train"] == int(meta["n_tokens"] * 0.8)


def test_bad_input_never_replaces_a_good_token_file(text_file, tmp_path):
    out = tmp_path / "run"
    prepare(cfg_for(text_file, out, memmap_dataset=True), None)
    before = (out / TOKENS_BIN).read_bytes(), (out / TOKENS_META).read_text()
    short = tmp_path / "short.txt"
    short.write_text("far too short\n", encoding="utf-8")
    with pytest.raises(UserError, match="needs at least 17"):
        prepare(cfg_for(short, out, memmap_dataset=True), None)
    assert ((out / TOKENS_BIN).read_bytes(), (out / TOKENS_META).read_text()) == before
    assert sorted(p.name for p in out.iterdir()) == [TOKENS_BIN, TOKENS_META]  # no temp file left


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    p = tmp_path / "wide.txt"
    p.write_text("\n".join("".join(chars[i:i + 50]) + " x" for i in range(0, len(chars), 50)), encoding="utf-8")
    tok, train, val, _ = prepare(cfg_for(p, tmp_path / "run", memmap_dataset=True), None)
    assert tok.vocab_size > 2**16 and train.dtype == "uint32"
    mem = in_memory_tokens(tok, str(p), "x")
    assert np.fromfile(tmp_path / "run" / TOKENS_BIN, dtype=np.uint32).tolist() == mem.tolist()
    assert token_dtype(2**16) == "uint16" and token_dtype(2**16 + 1) == "uint32"


def test_token_file_is_cheap_to_send_to_workers(text_file, tmp_path):
    _, train, _, _ = prepare(cfg_for(text_file, tmp_path / "run", memmap_dataset=True), None)
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
        prepare(cfg_for(text_file, tmp_path / "run", memmap_dataset=memmap), saved)
    assert not (tmp_path / "run" / TOKENS_BIN).exists()


# --- a folder of files ------------------------------------------------------------------------------------------

FOLDER = {"b/second.md": corpus_text(300, seed=2), "a.txt": corpus_text(500, seed=1),
          "c.txt": corpus_text(200, seed=3).rstrip("\n")}  # c.txt does not end with a newline
ORDER = ["a.txt", "b/second.md", "c.txt"]  # sorted path order


def make_folder(root: Path, files: dict[str, str] = FOLDER) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4 not text")  # ignored
    return root


def blank_line_join(parts: list[str]) -> str:
    """The parts joined as char training joins documents: a blank line between two, whatever each ends with."""
    out = ""
    for part in (p for p in parts if p):
        if out:
            out += "\n" if out.endswith("\n") else "\n\n"
        out += part
    return out


def test_each_file_of_a_folder_holds_out_its_own_validation_part(tmp_path, capsys):
    root = make_folder(tmp_path / "notes")
    tok, train, val, bytes_per_token = prepare(cfg_for(root, tmp_path / "run"), None)
    assert "3 text files" in capsys.readouterr().err
    texts = [FOLDER[rel] for rel in ORDER]
    cut = [int(len(t) * 0.9) for t in texts]  # char: one token per character
    assert tok.decode(train.tolist()) == blank_line_join([t[:k] for t, k in zip(texts, cut, strict=True)])
    assert tok.decode(val.tolist()) == blank_line_join([t[k:] for t, k in zip(texts, cut, strict=True)])
    # Bits per byte counts the bytes of the validation parts, not the separators between them.
    val_text_bytes = sum(len(t[k:].encode("utf-8")) for t, k in zip(texts, cut, strict=True))
    assert bytes_per_token == val_text_bytes / len(val)
    # A file's split does not depend on the others: alone in a folder, a.txt holds out the same text.
    alone = make_folder(tmp_path / "alone", {"a.txt": FOLDER["a.txt"]})
    tok2, _, val2, _ = prepare(cfg_for(alone, tmp_path / "run2"), None)
    assert tok2.decode(val2.tolist()) == texts[0][cut[0]:]


@needs_bpe
def test_bpe_separates_documents_with_the_end_of_text_token(tmp_path, capsys):
    root = make_folder(tmp_path / "notes")
    tok, train, val, bytes_per_token = prepare(cfg_for(root, tmp_path / "run", tokenizer="bpe",
                                                       bpe_vocab_size=300), None)
    ids = [tok.encode_array(FOLDER[rel]) for rel in ORDER]
    cut = [int(len(i) * 0.9) for i in ids]
    eot = [tok.eot_id]
    assert train.tolist() == [*ids[0][:cut[0]], *eot, *ids[1][:cut[1]], *eot, *ids[2][:cut[2]]]
    assert val.tolist() == [*ids[0][cut[0]:], *eot, *ids[1][cut[1]:], *eot, *ids[2][cut[2]:]]
    lengths = tok.byte_lengths()
    assert bytes_per_token == sum(int(lengths[i[k:]].sum()) for i, k in zip(ids, cut, strict=True)) / len(val)
    # An imported tokenizer may have no end-of-text token: a blank line separates the documents, and it says so.
    data = json.loads(tok.to_json())
    data["eot_token"] = None
    capsys.readouterr()
    tok3, train3, _, _ = prepare(cfg_for(root, tmp_path / "run3", tokenizer="bpe", bpe_vocab_size=300),
                                 json.dumps(data))
    assert "has no end-of-text token" in capsys.readouterr().err and tok3.eot_id is None
    sep = tok3.encode_array("\n\n").tolist()  # a.txt's training part ends mid-line
    assert train3.tolist()[: cut[0] + len(sep)] == [*ids[0][:cut[0]], *sep]


@pytest.mark.parametrize("kind", ["char", pytest.param("bpe", marks=needs_bpe)])
def test_a_folders_token_file_equals_its_tokens_in_memory(tmp_path, monkeypatch, kind):
    import functools

    from tinyllm import text_source
    from tinyllm.batches import WindowBatches

    root = make_folder(tmp_path / "notes")
    extra = {"tokenizer": kind, "bpe_vocab_size": 300}
    tok_a, train_a, val_a, bpt_a = prepare(cfg_for(root, tmp_path / "a", **extra), None)
    # The token file streams: no file is ever read whole, and the pieces are small.
    monkeypatch.setattr("tinyllm.tokens.iter_text_chunks", functools.partial(text_source.iter_text_chunks,
                                                                             chunk_bytes=97))

    def no_whole_reads(*a, **k):
        raise AssertionError("read whole")

    monkeypatch.setattr("tinyllm.tokens.read_text", no_whole_reads)
    tok_b, train_b, val_b, bpt_b = prepare(cfg_for(root, tmp_path / "b", memmap_dataset=True, **extra), None)
    assert isinstance(train_b, TokenFile) and tok_a.to_json() == tok_b.to_json()
    assert (len(train_a), len(val_a), bpt_a) == (len(train_b), len(val_b), bpt_b)
    on_disk = np.fromfile(tmp_path / "b" / TOKENS_BIN, dtype=np.uint16)
    assert on_disk.tolist() == torch.cat([train_a, val_a]).tolist()
    sa, sb = BatchSampler(train_a, 16, 4, seed=5), BatchSampler(train_b, 16, 4, seed=5)
    for t in (None, 8):
        assert all(torch.equal(a, b) for a, b in zip(sa.next(t), sb.next(t), strict=True))
    wa, wb = WindowBatches(val_a, 16, 4, seed=2), WindowBatches(val_b, 16, 4, seed=2)  # the workers' batches
    assert all(torch.equal(a, b) for a, b in zip(wa[3], wb[3], strict=True))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [TOKENS_BIN, TOKENS_META]  # no temp files left


def test_a_folders_sidecar_names_the_file_that_changed(tmp_path, capsys):
    root = make_folder(tmp_path / "notes")
    out = tmp_path / "run"
    bin_path = out / TOKENS_BIN

    def build(saved: str | None = None, **kw) -> str:
        capsys.readouterr()
        prepare(cfg_for(kw.pop("path", root), out, memmap_dataset=True, **kw), saved)
        return capsys.readouterr().err

    assert "no usable tokens.bin" in build()
    meta = json.loads((out / TOKENS_META).read_text())
    files = [root / rel for rel in ORDER]
    assert meta["source"]["kind"] == "folder" and meta["source"]["path"] == str(root.resolve())
    assert meta["source"]["files"] == [{"path": str(f.resolve()), "size": f.stat().st_size,
                                        "mtime_ns": f.stat().st_mtime_ns} for f in files]
    assert meta["separator"] == "a blank line" and meta["val_fraction"] == 0.1 and meta["format"] == 1
    stamp = bin_path.stat().st_mtime_ns
    assert "reusing" in build() and bin_path.stat().st_mtime_ns == stamp
    (root / "ignored.png").write_bytes(b"\x89PNG")  # not a text file: nothing to rebuild
    assert "reusing" in build()

    second = root / "b" / "second.md"
    second.write_text(FOLDER["b/second.md"].replace("cat", "tac"), encoding="utf-8")  # same size
    os.utime(second, ns=(stamp + 10**9, stamp + 10**9))
    err = build()
    assert f"{second.resolve()} changed (size or modification time) since tokens.bin was made" in err, err
    assert "reusing" in build()
    (root / "b" / "new.txt").write_text(corpus_text(100, seed=9), encoding="utf-8")
    assert f"{(root / 'b' / 'new.txt').resolve()} was added since tokens.bin was made" in build()
    (root / "a.txt").unlink()
    assert f"{(root / 'a.txt').resolve()} was removed since tokens.bin was made" in build()
    (root / "c.txt").rename(root / "d.txt")
    (root / "e.md").write_text("", encoding="utf-8")
    err = build()
    assert f"{(root / 'd.txt').resolve()} (and 1 more) was added; {(root / 'c.txt').resolve()} was removed" in err
    assert "reusing" in build()
    # Every file holds out its own share, so a new --val_fraction lays the token file out anew.
    assert "--val_fraction changed (0.1 -> 0.2)" in build(val_fraction=0.2)
    meta = json.loads((out / TOKENS_META).read_text())
    assert meta["val_fraction"] == 0.2 and "reusing" in build(val_fraction=0.2)
    # Another source altogether (with one tokenizer throughout, which the sidecar checks first).
    saved = CharTokenizer.from_text("".join(FOLDER.values()) + corpus_text(100, seed=9) + "\n").to_json()
    assert f"was made from another source ({root.resolve()})" in build(saved, path=root / "b")
    single = root / "d.txt"
    assert f"was made from another source ({(root / 'b').resolve()})" in build(saved, path=single)
    assert "reusing" in build(saved, path=single)
    assert f"was made from another source ({single.resolve()})" in build(saved)


def test_a_single_files_sidecar_keeps_its_format(text_file, tmp_path):
    prepare(cfg_for(text_file, tmp_path / "run", memmap_dataset=True), None)
    meta = json.loads((tmp_path / "run" / TOKENS_META).read_text())
    assert set(meta) == {"format", "dtype", "tokenizer_sha256", "source", "n_tokens", "n_train", "val_fraction",
                         "val_bytes", "tokenizer_kind", "vocab_size"}
    assert meta["format"] == 1 and set(meta["source"]) == {"path", "size", "mtime_ns"}


def test_a_bad_file_in_a_folder_is_named_and_leaves_nothing_behind(tmp_path):
    root = make_folder(tmp_path / "notes")
    (root / "b" / "latin1.txt").write_bytes(b"caf\xe9 " * 50)
    saved = CharTokenizer.from_text("".join(FOLDER.values()) + "\n").to_json()  # the text is read while tokenising
    out = tmp_path / "new_run"
    for memmap in (True, False):
        with pytest.raises(UserError, match=r"latin1.txt is not UTF-8 \(invalid byte 0xe9 at byte offset 3\)"):
            prepare(cfg_for(root, out, memmap_dataset=memmap), saved)
        assert not out.exists()


def test_a_refused_run_leaves_the_folders_token_file_alone(tmp_path):
    """The run folder is held and checked before the memmapped tokens.bin is (re)built: a second run with other
    text, refused because the folder holds a run or is in use, must not swap the token file under that run."""
    from tinyllm.rundir import RunLock

    first, other = tmp_path / "first.txt", tmp_path / "other.txt"
    first.write_text(corpus_text(), encoding="utf-8")
    other.write_text("zyx wvu " * 3000, encoding="utf-8")
    out = tmp_path / "run"
    args = ["--out_dir", out, *TINY, "--memmap_dataset", "--max_steps", "2", "--eval_interval", "0"]
    assert run_cli(["--data_path", first, *args]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert run_cli(["--data_path", other, *args]) == 2  # holds a run
    lock = RunLock(out)
    lock.acquire()  # a run still training there
    try:
        assert run_cli(["--data_path", other, *args, "--overwrite"]) == 2
    finally:
        lock.release()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_run_that_fails_before_training_leaves_no_folder_and_no_temporary(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    out = tmp_path / "new"
    assert run_cli(["--data_path", text, "--out_dir", out, *TINY, "--memmap_dataset", "--compile",
                    "--compile_backend", "no_such_backend"]) == 2
    assert not out.exists()  # the folder it made, tokens.bin and all, went with it
    # A build killed outright leaves its temporary file; the next build (which holds the folder) clears it.
    out.mkdir()
    (out / f".{TOKENS_BIN}.killed.tmp").write_bytes(b"\0" * 100)
    prepare(cfg_for(text, out, memmap_dataset=True), None)
    assert sorted(p.name for p in out.iterdir()) == [TOKENS_BIN, TOKENS_META]
    if os.name == "posix":  # made through mkstemp, but with a plain file's mode, as the sidecar beside it
        assert (out / TOKENS_BIN).stat().st_mode & 0o777 == (out / TOKENS_META).stat().st_mode & 0o777
