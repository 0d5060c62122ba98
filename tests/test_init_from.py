"""--init_from: a new run from a tinyllm run or a Hugging Face model. Before its first step the model computes
what the source computes (a run: identically; transformers: within 1e-4) and generates the same greedy tokens;
it fine-tunes, resumes bit for bit, exports and evaluates; its shape and tokenizer are the source's; and every
bad input is one line and status 2, with nothing written."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing may download

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import TINY, make_text, run_cli, run_subprocess  # noqa: E402

from tinyllm import config as C  # noqa: E402
from tinyllm import distributed  # noqa: E402
from tinyllm.checkpoint import load_checkpoint  # noqa: E402
from tinyllm.cli import build_parser  # noqa: E402
from tinyllm.generate import SamplingParams, generate, load_model  # noqa: E402
from tinyllm.metrics import read_metrics  # noqa: E402
from tinyllm.model import ModelArgs  # noqa: E402
from tinyllm.runconfig import resolve_run  # noqa: E402
from tinyllm.train import Trainer, train  # noqa: E402

# The source: not the default architecture, so that every shape setting has to travel.
SOURCE_FLAGS = ["--pos_encoding", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--n_kv_head", "1",
                "--weight_tying", "--no-bias", "--rope_theta", "500"]
FT = ["--batch_size", "4", "--eval_iters", "1", "--eval_interval", "3", "--log_interval", "1",
      "--sample_interval", "0", "--checkpoint_interval", "0", "--optimizer", "adamw", "--lr", "1e-3",
      "--lr_warmup_steps", "1", "--lr_schedule", "cosine", "--lr_decay_steps", "6", "--dropout", "0.1",
      "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    base = tmp_path_factory.mktemp("texts")
    a, b = base / "a.txt", base / "b.txt"
    a.write_text(make_text(3000, seed=1), encoding="utf-8")
    b.write_text(make_text(1500, seed=2), encoding="utf-8")
    assert set(b.read_text()) <= set(a.read_text())
    return a, b


@pytest.fixture(scope="module")
def source_run(texts, tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "run"
    assert run_cli(["--data_path", texts[0], "--out_dir", run, *TINY, "--max_steps", "6", "--eval_interval", "0",
                    "--device", "cpu", *SOURCE_FLAGS]) == 0
    return run


def finetune(src, data, out, *extra) -> int:
    return run_cli(["--init_from", src, "--data_path", data, "--out_dir", out, *FT, *extra])


def trainer_before_first_step(src, data, out, *extra):
    """The fine-tuning run's Trainer, built as the command line builds it (resolve_run, then Trainer)."""
    ns = build_parser().parse_args([str(a) for a in ["--init_from", src, "--data_path", data, "--out_dir", out,
                                                      *FT, *extra]])
    cfg, ckpt, source = resolve_run(ns)
    assert ckpt is None and source is not None
    return Trainer(cfg, None, distributed.setup(False, "auto"), source)


def greedy(model, ids: list[int], n: int = 12) -> list[int]:
    x = torch.tensor([ids])
    return [int(t) for t in torch.cat(list(generate(model, x, n, SamplingParams(temperature=0.0))), 1)[0]]


def test_a_run_continues_exactly_then_fine_tunes_and_resumes_bit_for_bit(source_run, texts, tmp_path):
    model, tok, ckpt = load_model(str(source_run))
    t = trainer_before_first_step(source_run, texts[1], tmp_path / "probe")
    try:
        ft = t.model.eval()
        assert t.cfg.init_from == str(source_run)
        assert ModelArgs(**{**t.args.to_dict(), "dropout": 0.0}) == model.args  # the shape is the source's
        assert t.tokenizer.to_json() == ckpt["tokenizer"]
        assert t.progress.step == 0
        x = torch.tensor([tok.encode("The cat sat on a warm mat")])
        with torch.no_grad():
            assert torch.equal(ft(x)[0], model(x)[0])
        assert greedy(ft, x[0].tolist()) == greedy(model, x[0].tolist())
    finally:
        t.close()

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert finetune(source_run, texts[1], straight, "--max_steps", "6") == 0
    assert finetune(source_run, texts[1], split, "--max_steps", "3") == 0
    assert run_cli(["--out_dir", split, "--resume", "--max_steps", "6", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not torch.equal(a["model"]["tok_emb.weight"], ckpt["model"]["tok_emb.weight"])  # it trained
    # It started at step 0 with its own settings, and records where it started (the resume keeps the record).
    rows = read_metrics(straight / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r][:2] == [1, 2]
    for run, c in ((straight, a), (split, b)):
        assert c["origin"] == {"kind": "tinyllm", "path": str((source_run / "ckpt.pt").resolve()), "step": 6,
                               "description": c["origin"]["description"]}
        saved = json.loads((run / "config.json").read_text())
        assert saved["init_from"] == str(source_run) and saved["n_kv_head"] == 1 and saved["lr"] == 1e-3
        assert saved["dropout"] == 0.1 and c["config"]["init_from"] == str(source_run)
    assert "init: starting from tinyllm run" in (straight / "train.log").read_text()


def test_train_called_directly_takes_the_source_shape(source_run, texts, tmp_path):
    cfg = C.validate(C.from_dict({"init_from": str(source_run), "data_path": str(texts[1]),
                                  "out_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2,
                                  "eval_interval": 0, "sample_interval": 0, "device": "cpu", "progress": False}))
    assert cfg.n_layer == 4 and cfg.pos_encoding == "learned"  # the defaults, not the source's
    assert train(cfg) == 0
    got = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert got["model_args"] == load_checkpoint(source_run / "ckpt.pt")["model_args"]
    assert got["config"]["n_layer"] == 1 and got["config"]["pos_encoding"] == "rope"


# --- Hugging Face models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hf_model_fine_tunes_exports_and_evaluates(name, texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from test_hf_import import MAKERS, greedy_hf, logits_diff

    from tinyllm.evaluate import evaluate
    from tinyllm.export import main as export_main

    folder = tmp_path / name
    hf, hf_tok = MAKERS[name](folder)
    data = texts[1]
    t = trainer_before_first_step(folder, data, tmp_path / "probe")
    try:
        ft = t.model.eval()
        assert t.tokenizer.kind == "bpe" and t.cfg.block_size == 32 and t.cfg.init_from == str(folder)
        ids = t.tokenizer.encode(data.read_text()[:400])
        assert ids == hf_tok.encode(data.read_text()[:400], add_special_tokens=False).ids
        x = torch.tensor([ids[:32], ids[32:64]])
        assert logits_diff(ft, hf, x) < 1e-4
        assert greedy(ft, ids[:6]) == greedy_hf(hf, torch.tensor([ids[:6]]), 12)
    finally:
        t.close()

    run = tmp_path / "run"
    assert finetune(folder, data, run, "--max_steps", "3") == 0
    ckpt = load_checkpoint(run / "ckpt.pt")
    assert ckpt["origin"]["kind"] == "hf" and ckpt["origin"]["architecture"] == type(hf).__name__
    assert ckpt["model_args"]["vocab_size"] == hf.config.vocab_size  # Llama's padded embedding kept
    assert ckpt["tokenizer"] == t.tokenizer.to_json()

    exported = tmp_path / "exported"
    try:
        export_main(["--out_dir", str(run), "--format", "hf", "--output", str(exported)])
    except SystemExit as e:
        assert e.code in (0, None)
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()
    model, _, _ = load_model(str(run))
    assert logits_diff(model, hf2, x) < 1e-4
    with torch.no_grad():
        assert (hf2(input_ids=x).logits - hf(input_ids=x).logits).abs().max() > 1e-4  # it trained
    ours, theirs = (evaluate(str(p), str(data), device="cpu", progress=False) for p in (run, exported))
    assert ours["tokens"] == theirs["tokens"] and abs(ours["loss"] - theirs["loss"]) < 1e-4
    assert abs(ours["bpb"] - theirs["bpb"]) < 1e-4


# --- the char vocabulary ---------------------------------------------------------------------------------------

def test_characters_outside_a_char_vocabulary(source_run, texts, tmp_path, capsys):
    odd = tmp_path / "odd.txt"
    text = texts[1].read_text() + "Zebras & $5 deals.\n" * 3
    odd.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert finetune(source_run, odd, out, "--max_steps", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data_path") and len(err.splitlines()) == 1
    for needle in ("'$' (3x)", "'&' (3x)", "'Z' (3x)", "'5' (3x)", "--drop_unknown_chars",
                   str(source_run)):
        assert needle in err, err
    assert not out.exists()

    assert finetune(source_run, odd, out, "--max_steps", "1", "--drop_unknown_chars") == 0
    log = (out / "train.log").read_text()
    assert "warning: --drop_unknown_chars: leaving out" in log and "'$' (3x)" in log
    dropped = sum(text.count(c) for c in "$&Z5")
    n_train, n_val = (int(n.replace(",", "")) for n in re.search(r"-> ([\d,]+) train / ([\d,]+) val", log).groups())
    assert n_train + n_val == len(text) - dropped


def test_a_folder_of_texts_is_checked_file_by_file(source_run, texts, tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(texts[1].read_text(), encoding="utf-8")
    (folder / "sub" / "b.md").write_text("Dollars $ here.\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    assert finetune(source_run, folder, out, "--max_steps", "1") == 2
    assert "'$' (40x)" in capsys.readouterr().err and not out.exists()
    assert finetune(source_run, folder, out, "--max_steps", "1", "--drop_unknown_chars") == 0


# --- bad input: one line, status 2, nothing written -------------------------------------------------------------

def bert_folder(p):
    p.mkdir()
    (p / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    return p


def quick_gelu_folder(p):
    p.mkdir()
    (p / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                               "activation_function": "quick_gelu"}))
    return p


@pytest.mark.parametrize("case, extra, needles", [
    ("shape", ["--n_layer", "3"], ["--n_layer 3 conflicts with --init_from", "n_layer=1", "drop the flag"]),
    ("shape", ["--pos_encoding", "learned"], ["--pos_encoding learned conflicts", "pos_encoding=rope"]),
    ("shape", ["--tokenizer", "bpe"], ["--tokenizer bpe conflicts", "tokenizer=char"]),
    ("shape", ["--tokenizer_path", "tok.json"], ["--tokenizer_path tok.json conflicts", "drop --tokenizer_path"]),
    ("missing", [], ["--init_from", "no such file or folder"]),
    ("empty", [], ["--init_from", "neither a tinyllm run", "Hugging Face"]),
    ("bert", [], ["--init_from", "BertForMaskedLM", "GPT2LMHeadModel, LlamaForCausalLM and Qwen3ForCausalLM"]),
    ("quick_gelu", [], ["--init_from", "activation_function", "quick_gelu", "gelu_new"]),
])
def test_bad_input(case, extra, needles, source_run, texts, tmp_path, capsys):
    src = {"shape": lambda: source_run, "missing": lambda: tmp_path / "nope",
           "empty": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
           "bert": lambda: bert_folder(tmp_path / "bert"),
           "quick_gelu": lambda: quick_gelu_folder(tmp_path / "q")}[case]()
    out = tmp_path / "run"
    assert finetune(src, texts[1], out, "--max_steps", "1", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


def test_init_from_with_resume_or_generate_only(source_run, texts, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(source_run, texts[1], out, "--max_steps", "1") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert run_cli(["--out_dir", out, "--resume", "--init_from", source_run, "--max_steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "drop --init_from" in err and "drop --resume" in err
    assert run_cli(["--out_dir", out, "--generate_only", "--init_from", source_run]) == 2
    assert "--generate_only" in capsys.readouterr().err
    # A --config naming another model to start from, on --resume.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"init_from": str(tmp_path / "elsewhere")}))
    assert run_cli(["--config", other, "--out_dir", out, "--resume", "--max_steps", "2"]) == 2
    assert "init_from" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # The same one (as a preset or the GUI's saved settings hold it) resumes.
    other.write_text(json.dumps({"init_from": str(source_run)}))
    assert run_cli(["--config", other, "--out_dir", out, "--resume", "--max_steps", "2", "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2


def test_error_is_one_line_without_a_traceback(texts, tmp_path):
    r = run_subprocess(["--init_from", tmp_path / "nope", "--data_path", texts[1], "--out_dir", tmp_path / "run"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: --init_from") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
