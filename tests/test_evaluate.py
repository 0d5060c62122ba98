"""tinyllm-eval: a known answer, the windows, a run against its Hugging Face export, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import CLASSIC, REPO, TINY, exit_status, make_text, run_cli  # noqa: E402

from tinyllm.checkpoint import save_checkpoint  # noqa: E402
from tinyllm.evaluate import eval_windows, evaluate, evaluate_ids, main  # noqa: E402
from tinyllm.generate import load_model  # noqa: E402
from tinyllm.model import GPT, ModelArgs  # noqa: E402
from tinyllm.tokenizer import CharTokenizer  # noqa: E402


def run_eval(*args) -> int:
    return exit_status(main, args)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "eval.txt"
    p.write_text(make_text(600, seed=7) + "Naïve café — 東京 🙂 on a warm mat.\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A few steps of a BPE run (tiny), and its training text."""
    base = tmp_path_factory.mktemp("run")
    corpus = base / "corpus.txt"
    corpus.write_text(make_text(3000) + "Naïve café — 東京 🙂 on a warm mat.\n" * 10, encoding="utf-8")
    run = base / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC,
                    "--max_steps", "8", "--eval_interval", "0",
                    "--tokenizer", "bpe", "--bpe_vocab_size", "300"]) == 0
    return run


def test_uniform_model_scores_ln_vocab(text_file, tmp_path, capsys):
    """All weights zero: every logit is 0, every prediction uniform, so the loss is ln(vocab) exactly."""
    text = text_file.read_text(encoding="utf-8")
    run, tok = zero_model_run(tmp_path / "zero", text)
    assert run_eval("--model", run, "--data_path", text_file, "--device", "cpu") == 0
    out = capsys.readouterr()
    r = last_json(out.out)
    v = tok.vocab_size
    assert r["loss"] == pytest.approx(math.log(v), abs=1e-6)
    assert r["perplexity"] == pytest.approx(v, rel=1e-5)
    assert r["tokens"] == len(text) - 1  # every character but the first is predicted
    assert r["bytes"] == len(text.encode("utf-8")) - len(text[0].encode("utf-8"))
    assert r["bpb"] == pytest.approx(r["tokens"] * math.log2(v) / r["bytes"], rel=1e-6)
    assert r["mode"] == "disjoint" and r["context"] == 32 and r["stride"] == 32
    assert "evaluating" in out.err  # the progress bar
    assert "bpb" in out.out and "disjoint windows of 32 tokens" in out.out


@pytest.mark.parametrize("n, context, stride", [(2, 8, 0), (9, 8, 0), (10, 8, 0), (100, 8, 0), (100, 8, 3),
                                                (100, 8, 1), (100, 8, 8), (5, 8, 3), (64, 16, 15)])
def test_windows_score_every_token_once(n, context, stride):
    seen = []
    for start, length, offset in eval_windows(n, context, stride):
        assert 1 <= length <= context and 0 <= offset < length and start + length <= n - 1
        targets = range(start + offset + 1, start + length + 1)
        seen += targets
        if stride and start > 0:  # sliding: every scored token sees at least context - stride earlier ones
            assert all(t - start >= min(context - stride, t) for t in targets)
    assert seen == list(range(1, n))


def reference_loss(model: GPT, ids: np.ndarray, stride: int) -> float:
    """Token by token: each target scored with exactly the context its window gives it."""
    nll = []
    for start, length, offset in eval_windows(len(ids), model.args.block_size, stride):
        x = torch.tensor(ids[start:start + length])[None]
        logp = torch.log_softmax(model(x)[0][0].double(), -1)
        nll += [-float(logp[j, ids[start + j + 1]]) for j in range(offset, length)]
    return sum(nll) / len(nll)


def test_disjoint_and_sliding_match_a_reference(bpe_run, text_file):
    model, tok, _ = load_model(str(bpe_run))
    ids = tok.encode_array(text_file.read_text(encoding="utf-8"))[:300]
    lengths = tok.byte_lengths()
    with torch.no_grad():
        for stride in (0, 8, 32):
            r = evaluate_ids(model, ids, lengths, stride=stride, batch_size=3, progress=False)
            assert r["loss"] == pytest.approx(reference_loss(model, ids, stride), abs=1e-5)
            assert r["tokens"] == len(ids) - 1
            assert r["bytes"] == int(lengths[ids[1:]].sum())
            assert r["mode"] == ("sliding" if stride == 8 else "disjoint")
    one = evaluate_ids(model, ids, lengths, stride=8, batch_size=1, progress=False)
    many = evaluate_ids(model, ids, lengths, stride=8, batch_size=64, progress=False)
    assert one["loss"] == pytest.approx(many["loss"], abs=1e-6)


def test_run_and_its_hf_export_agree(bpe_run, text_file, tmp_path):
    pytest.importorskip("transformers")
    from tinyllm.export_hf import export_hf

    hf_dir = tmp_path / "hf"
    export_hf(bpe_run, hf_dir)
    for stride in (0, 16):
        ours = evaluate(str(bpe_run), str(text_file), stride=stride, device="cpu", progress=False)
        theirs = evaluate(str(hf_dir), str(text_file), stride=stride, device="cpu", progress=False)
        assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5)
        assert theirs["bpb"] == pytest.approx(ours["bpb"], abs=1e-5)
        assert (theirs["tokens"], theirs["bytes"]) == (ours["tokens"], ours["bytes"])
        assert "Hugging Face GPT2LMHeadModel" in theirs["model"] and "tinyllm run" in ours["model"]


def test_command_line(bpe_run, text_file):
    p = subprocess.run([sys.executable, "-m", "tinyllm.evaluate", "--model", str(bpe_run), "--data_path",
                        str(text_file), "--device", "cpu", "--stride", "16"], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    r = last_json(p.stdout)
    assert {"loss", "perplexity", "bpb", "tokens", "bytes"} <= set(r)
    assert r["mode"] == "sliding" and r["stride"] == 16
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert "tok" in p.stderr  # tqdm's bar


def test_bad_input(bpe_run, text_file, tmp_path, capsys):
    def fails(*args, needles):
        assert run_eval(*args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        for n in needles:
            assert n in err, err

    fails("--model", tmp_path / "nope", "--data_path", text_file, needles=["--model", "nope"])
    (tmp_path / "empty_dir").mkdir()
    fails("--model", tmp_path / "empty_dir", "--data_path", text_file, needles=["--model", "neither"])
    fails("--model", bpe_run, "--data_path", tmp_path / "missing.txt", needles=["--data_path", "not found"])
    fails("--model", bpe_run, "--data_path", tmp_path, needles=["--data_path", "holds no files"])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    fails("--model", bpe_run, "--data_path", latin1, needles=["--data_path", "not UTF-8", "byte offset 3"])
    fails("--model", bpe_run, "--data_path", text_file, "--stride", "33", needles=["--stride 33 is longer", "32"])
    fails("--model", bpe_run, "--data_path", text_file, "--stride", "-1", needles=["--stride -1 is negative"])
    (tmp_path / "broken_hf").mkdir()  # weights and all, but a config.json that is not JSON
    (tmp_path / "broken_hf" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"],')
    fails("--model", tmp_path / "broken_hf", "--data_path", text_file,
          needles=["--model", "its config.json is not readable JSON"])
    fails("--model", bpe_run, "--data_path", text_file, "--batch_size", "0", needles=["--batch_size"])
    fails("--data_path", text_file, needles=["--model"])
    one = tmp_path / "one.txt"
    one.write_text("a", encoding="utf-8")
    fails("--model", bpe_run, "--data_path", one, needles=["--data_path", "at least 2"])


def test_char_model_unknown_characters(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", run, *TINY, *CLASSIC,
                    "--max_steps", "2", "--eval_interval", "0"]) == 0
    odd = tmp_path / "odd.txt"
    odd.write_text("the cat § sat on the mat\n" * 3, encoding="utf-8")
    assert run_eval("--model", run, "--data_path", odd, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "'§'" in err and "--drop_unknown_chars" in err and "--data_path" in err
    assert run_eval("--model", run, "--data_path", odd, "--no-progress", "--drop_unknown_chars") == 0
    out = capsys.readouterr()
    assert "'§'" in out.err and "warning" in out.err
    assert last_json(out.out)["tokens"] == len("the cat  sat on the mat\n" * 3) - 1


# --- a folder of files ------------------------------------------------------------------------------------------


def zero_model_run(path, text: str):
    """A run whose model predicts uniformly (all weights zero) over the characters of `text`."""
    tok = CharTokenizer.from_text(text)
    args = ModelArgs(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)
    model = GPT(args)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    path.mkdir()
    save_checkpoint({"format_version": 1, "config": {}, "model_args": args.to_dict(), "model": model.state_dict(),
                     "tokenizer": tok.to_json(), "step": 0}, path / "ckpt.pt")
    return path, tok


def test_evaluate_a_folder(tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    a, b = "Naïve café on a warm mat.\n" * 5, "the dog ran to the old red barn" * 4  # b: no final newline
    (folder / "a.txt").write_text(a, encoding="utf-8")
    (folder / "sub" / "b.md").write_text(b, encoding="utf-8")
    (folder / "c.json").write_text("{}", encoding="utf-8")
    run, tok = zero_model_run(tmp_path / "zero", a + b)
    assert run_eval("--model", run, "--data_path", folder, "--device", "cpu", "--no-progress") == 0
    out = capsys.readouterr()
    r = last_json(out.out)
    assert "2 text files" in out.err and "ignored 1 other file" in out.err
    # a, then a blank line (a ends with a newline: one more), then b; the separator's byte is not text.
    assert r["tokens"] == len(a) + 1 + len(b) - 1
    assert r["bytes"] == len((a + b).encode("utf-8")) - 1
    v = tok.vocab_size
    assert r["loss"] == pytest.approx(math.log(v), abs=1e-6)
    assert r["bpb"] == pytest.approx(r["tokens"] * math.log2(v) / r["bytes"], rel=1e-6)
    # A glob pattern selects files likewise; one file in a folder scores as the file itself.
    pattern = str(folder / "**" / "*.md")
    assert run_eval("--model", run, "--data_path", pattern, "--device", "cpu", "--no-progress") == 0
    alone = last_json(capsys.readouterr().out)
    assert run_eval("--model", run, "--data_path", folder / "sub" / "b.md", "--device", "cpu", "--no-progress") == 0
    single = last_json(capsys.readouterr().out)
    assert {k: alone[k] for k in ("loss", "tokens", "bytes", "bpb")} == \
        {k: single[k] for k in ("loss", "tokens", "bytes", "bpb")}


def test_evaluate_a_folder_with_bpe_separates_documents_with_end_of_text(bpe_run, text_file, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [text_file.read_text(encoding="utf-8")[:900], "The cat sat on a warm mat.\n" * 12]
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t, encoding="utf-8")
    model, tok, _ = load_model(str(bpe_run))
    ids = [tok.encode_array(t) for t in texts]
    joined = np.concatenate([ids[0], [tok.eot_id], ids[1]])
    lengths = tok.byte_lengths()
    r = evaluate(str(bpe_run), str(folder), device="cpu", progress=False)
    ref = evaluate_ids(model, joined, lengths, progress=False)
    assert r["loss"] == pytest.approx(ref["loss"], abs=1e-6) and r["tokens"] == len(joined) - 1
    # Bytes are the documents' text: the end-of-text token's 13 bytes of name are not counted.
    assert r["bytes"] == ref["bytes"] - len("<|endoftext|>") == sum(len(t.encode()) for t in texts) - int(
        lengths[joined[0]])
    assert r["bpb"] == pytest.approx(ref["loss"] * r["tokens"] / math.log(2) / r["bytes"], rel=1e-9)


def test_bad_folders(bpe_run, tmp_path, capsys):
    def fails(path, needles):
        assert run_eval("--model", bpe_run, "--data_path", path, "--no-progress") == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: --data_path")
        for n in needles:
            assert n in err, err

    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", ["empty holds no files", "put .txt or .md files in it"])
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG")
    fails(tmp_path / "pics", ["holds no .txt or .md file", "1 other file ignored"])
    fails(str(tmp_path / "nowhere" / "*.txt"), ["matches no file", "quote it"])
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("fine text here", encoding="utf-8")
    (tmp_path / "mixed" / "b.txt").write_bytes(b"ok \xff")
    fails(tmp_path / "mixed", ["b.txt is not UTF-8", "byte offset 3"])
