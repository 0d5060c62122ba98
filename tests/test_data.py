"""The data of a run: the tokenizer it uses (from the checkpoint, --tokenizer_path or built from the text) and
its training and validation tokens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, make_text, run_cli

from tinyllm.config import Config
from tinyllm.data import build_tokenizer, prepare
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics
from tinyllm.tokenizer import CharTokenizer

try:
    import tokenizers  # noqa: F401

    HAVE_TOKENIZERS = True
except ImportError:
    HAVE_TOKENIZERS = False
needs_bpe = pytest.mark.skipif(not HAVE_TOKENIZERS, reason="the bpe extra (tokenizers) is not installed")


def test_prepare_splits_the_tokens_and_counts_validation_bytes(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("the cat sat on the mat. " * 40 + "caf\u00e9 " * 20, encoding="utf-8")
    tok, train, val, bytes_per_token = prepare(Config(data_path=str(p), out_dir=str(tmp_path / "run"),
                                                      block_size=16, batch_size=4), None)
    text = p.read_text(encoding="utf-8")
    assert isinstance(train, torch.Tensor) and len(train) + len(val) == len(text) and len(train) == int(len(text) * 0.9)
    assert tok.decode(val.tolist()) == text[len(train):]
    assert bytes_per_token == len(text[len(train):].encode("utf-8")) / len(val) > 1  # é is two bytes


def test_the_char_vocabulary_comes_from_the_whole_file_and_a_checkpoint_wins(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abc abc abc " * 30 + "\u00a7", encoding="utf-8")  # § only at the end, in the validation part
    cfg = Config(data_path=str(p), out_dir=str(tmp_path / "run"))
    tok, origin = build_tokenizer(cfg, None)
    assert "\u00a7" in tok.chars and origin == "the character vocabulary"
    saved = CharTokenizer.from_text("xyz").to_json()
    tok, origin = build_tokenizer(cfg, saved)
    assert tok.to_json() == saved and origin == "the checkpoint's tokenizer"


@needs_bpe
def test_tokenizer_path_reuses_a_tokenizer(corpus, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--data_path", corpus, *TINY, "--max_steps", "1", "--eval_interval", "0"]
    assert run_cli([*common, "--out_dir", first, "--tokenizer", "bpe", "--bpe_vocab_size", "280"]) == 0
    saved = first / "tokenizer.json"
    assert run_cli([*common, "--out_dir", second, "--tokenizer", "bpe", "--bpe_vocab_size", "280",
                    "--tokenizer_path", saved]) == 0
    assert (second / "tokenizer.json").read_text(encoding="utf-8") == saved.read_text(encoding="utf-8")
    capsys.readouterr()
    cases = [
        (["--tokenizer_path", saved], "holds a bpe tokenizer but --tokenizer is char; pass --tokenizer bpe"),
        (["--tokenizer", "bpe", "--tokenizer_path", saved], "has 280 tokens but --bpe_vocab_size is 4096"),
        (["--tokenizer_path", tmp_path / "nope.json"], "--tokenizer_path: file not found"),
        (["--tokenizer_path", first], "is a folder; pass the tokenizer.json in it"),
        (["--tokenizer_path", corpus], "--tokenizer_path"),
    ]
    for extra, needle in cases:
        assert run_cli([*common, "--out_dir", tmp_path / "c", *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


# --- a folder of files ------------------------------------------------------------------------------------------


def write_folder(root, texts: dict[str, str]):
    for rel, text in texts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_training_on_a_folder_through_the_cli(tmp_path, capsys):
    """A folder with memmap and DataLoader workers, end to end; the run records the folder as its data."""
    root = write_folder(tmp_path / "notes", {"one.txt": make_text(1500, seed=1), "deep/two.md": make_text(900, seed=2),
                                             "skip.json": "{}"})
    out = tmp_path / "run"
    assert run_cli(["--data_path", root, "--out_dir", out, *TINY, "--max_steps", "4", "--eval_interval", "4",
                    "--memmap_dataset", "--dataloader_workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "2 text files" in err and "ignored 1 other file (1 .json)" in err
    meta = json.loads((out / "tokens.bin.json").read_text())
    assert [f["path"] for f in meta["source"]["files"]] == [str((root / "deep" / "two.md").resolve()),
                                                             str((root / "one.txt").resolve())]
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert evals and evals[-1]["val_bpb"] > 0
    assert json.loads((out / "config.json").read_text())["data_path"] == str(root)
    # Resume with the same folder: the token file is reused.
    assert run_cli(["--out_dir", out, "--resume", "--max_steps", "6", "--no-progress"]) == 0
    assert "reusing" in capsys.readouterr().err


def test_a_folders_char_vocabulary_holds_the_separator(tmp_path):
    root = write_folder(tmp_path / "notes", {"a.txt": "abc abc " * 40, "b.txt": "cab cab " * 40})
    tok, _ = build_tokenizer(Config(data_path=str(root), out_dir=str(tmp_path / "run")), None)
    assert tok.chars == ["\n", " ", "a", "b", "c"]


@needs_bpe
def test_bpe_learns_from_the_training_part_of_every_file(tmp_path):
    """The validation part of each file (its last 10% of bytes here) never shapes the merges."""
    head = {"a.txt": make_text(2000, seed=1), "b/c.md": make_text(1500, seed=2)}
    root = write_folder(tmp_path / "notes", head)
    cfg = Config(data_path=str(root), out_dir=str(tmp_path / "run"), tokenizer="bpe", bpe_vocab_size=320)
    tok, origin = build_tokenizer(cfg, None)
    assert origin == "the BPE tokenizer" and tok.vocab_size == 320
    # Other text in every file's last tenth: the same tokenizer.
    for rel, text in head.items():
        n = len(text.encode("utf-8"))
        keep = text.encode("utf-8")[: int(n * 0.9)].decode("utf-8")
        (root / rel).write_text(keep + ("zyzzyva quux " * n)[: n - len(keep)], encoding="utf-8")  # same size
    assert build_tokenizer(cfg, None)[0].to_json() == tok.to_json()
    whole = Config(data_path=str(root), out_dir=str(tmp_path / "run"), tokenizer="bpe", bpe_vocab_size=320,
                   val_fraction=0.0)
    assert "zyzzyva" in build_tokenizer(whole, None)[0].to_json()  # where the tails are read, they do count
    big = Config(data_path=str(root), out_dir=str(tmp_path / "run"), tokenizer="bpe", bpe_vocab_size=100_000)
    with pytest.raises(UserError, match="too large for the training parts of the files of"):
        build_tokenizer(big, None)


def test_a_char_vocabulary_from_elsewhere_drops_unknown_characters_when_asked(corpus, tmp_path, capsys):
    """--tokenizer_path or a resumed run's vocabulary, on a text with characters it lacks: refused, naming
    --drop_unknown_chars; with it, trained, and the warning names what was left out."""
    odd = tmp_path / "odd.txt"
    odd.write_text(corpus.read_text(encoding="utf-8") + "§§ ¤\n", encoding="utf-8")
    common = [*TINY, "--max_steps", "2", "--eval_interval", "0"]
    assert run_cli(["--data_path", corpus, "--out_dir", tmp_path / "a", *common]) == 0
    vocab = ["--tokenizer_path", tmp_path / "a" / "tokenizer.json"]
    capsys.readouterr()
    assert run_cli(["--data_path", odd, "--out_dir", tmp_path / "b", *common, *vocab]) == 2
    assert "--drop_unknown_chars" in capsys.readouterr().err
    assert run_cli(["--data_path", odd, "--out_dir", tmp_path / "b", *common, *vocab, "--drop_unknown_chars"]) == 0
    err = capsys.readouterr().err
    assert "leaving out of the training text 2 distinct characters (3 in all)" in err and "--tokenizer_path" in err
    assert run_cli(["--data_path", odd, "--out_dir", tmp_path / "a", "--resume", "--max_steps", "3",
                    "--drop_unknown_chars"]) == 0
    assert "the char vocabulary of the run's checkpoint lacks" in capsys.readouterr().err
