"""End-to-end runs of the CLI on a tiny model: outputs, metrics, resume, generation, signals."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY, run_cli

from tinyllm.checkpoint import load_checkpoint
from tinyllm.metrics import read_metrics


def train(corpus, out, *extra):
    return run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *extra])


def test_run_writes_everything_and_learns(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "60", "--eval_interval", "30", "--sample_interval", "30") == 0
    for name in ("config.json", "ckpt.pt", "ckpt_best.pt", "tokenizer.json", "metrics.jsonl", "train.log"):
        assert (out / name).is_file(), name
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(5, 61, 5))
    assert all({"step", "time_s", "loss", "lr", "tokens_per_sec"} <= r.keys() for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.5
    assert [r["step"] for r in evals] == [30, 60]
    assert all({"val_loss", "train_eval_loss", "val_bpb"} <= r.keys() for r in evals)
    assert any("sample" in r for r in rows)
    assert rows[-1]["event"] == "end" and rows[-1]["reason"] == "max_steps"
    times = [r["time_s"] for r in rows]
    assert times == sorted(times)
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 60 and ckpt["tokens_seen"] == 60 * 8 * 32
    assert ckpt["best_val_loss"] == min(r["val_loss"] for r in evals)
    best = load_checkpoint(out / "ckpt_best.pt")
    assert best["best_val_loss"] == ckpt["best_val_loss"]
    assert json.loads((out / "config.json").read_text())["n_embd"] == 32
    err = capsys.readouterr().err
    assert "best val loss" in err and "--generate_only" in err and "parameters" in err


def test_checkpoint_is_weights_only_loadable(corpus, tmp_path):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "5", "--eval_interval", "0") == 0
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    for key in ("format_version", "config", "model_args", "model", "tokenizer", "optimizer", "step",
                "tokens_seen", "best_val_loss", "rng", "data_state", "time_s"):
        assert key in ckpt, key
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])


def test_resume_is_bit_identical(corpus, tmp_path):
    common = ["--dropout", "0.1", "--lr_decay_steps", "20", "--eval_interval", "5", "--checkpoint_interval", "7"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(corpus, straight, "--max_steps", "20", *common) == 0
    assert train(corpus, split, "--max_steps", "10", *common) == 0
    assert run_cli(["--out_dir", split, "--resume", "--max_steps", "20", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert b["step"] == 20 and b["tokens_seen"] == a["tokens_seen"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows_a = [r for r in read_metrics(straight / "metrics.jsonl") if "loss" in r and r["step"] > 10]
    rows_b = [r for r in read_metrics(split / "metrics.jsonl") if "loss" in r and r["step"] > 10]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    # the resumed run appended to the metrics and kept counting training time
    split_rows = read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in split_rows if r.get("event") == "end"] == [10, 20]
    assert split_rows[-1]["time_s"] >= split_rows[0]["time_s"]


def generate(out, *extra, capsys):
    code = run_cli(["--out_dir", out, "--generate_only", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_only(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "30", "--eval_interval", "10") == 0
    capsys.readouterr()
    args = ["--prompt", "The cat ", "--sample_chars", "40", "--seed", "7", "--temperature", "1.0",
            "--top_k", "10", "--top_p", "0.95", "--repetition_penalty", "1.2"]
    code, text, err = generate(out, *args, capsys=capsys)
    assert code == 0
    assert text.startswith("The cat ") and len(text) == len("The cat ") + 40 + 1  # + final newline
    assert "loaded" in err and "tokens/s" in err and "loaded" not in text
    assert generate(out, *args, capsys=capsys)[1] == text  # same seed, same text
    assert generate(out, *args[:-6], "--seed", "8", capsys=capsys)[1] != text
    # greedy is deterministic whatever the seed; best checkpoint loads too
    g1 = generate(out, "--temperature", "0", "--seed", "1", "--ckpt", "best", capsys=capsys)[1]
    g2 = generate(out, "--temperature", "0", "--seed", "2", "--ckpt", "best", capsys=capsys)[1]
    assert g1 == g2
    code, text, _ = generate(out, "--num_samples", "3", "--sample_chars", "10", "--prompt", "a", capsys=capsys)
    assert code == 0 and text.count("\n\n") >= 2


def test_generate_only_unknown_prompt_chars(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "3", "--eval_interval", "0") == 0
    capsys.readouterr()
    code, text, err = generate(out, "--prompt", "the §", capsys=capsys)
    assert code == 2 and "'§'" in err and "--drop_unknown_chars" in err and text == ""
    code, text, err = generate(out, "--prompt", "the §", "--drop_unknown_chars", "--sample_chars", "5",
                               capsys=capsys)
    assert code == 0 and "warning" in err


def test_config_json_not_written_by_generate_only(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "3", "--eval_interval", "0") == 0
    before = (out / "config.json").read_text()
    assert generate(out, "--temperature", "0.5", capsys=capsys)[0] == 0
    assert (out / "config.json").read_text() == before


def test_max_time_stops_and_saves(corpus, tmp_path):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "100000", "--max_time", "0.5", "--eval_interval", "0") == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["reason"] == "max_time"
    assert load_checkpoint(out / "ckpt.pt")["step"] == rows[-1]["step"] < 100000


def start_run(corpus, out):
    proc = subprocess.Popen([sys.executable, str(REPO / "train_tinyllm.py"), "--data_path", str(corpus),
                             "--out_dir", str(out), *TINY, "--max_steps", "1000000", "--eval_interval", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and any("loss" in r for r in read_metrics(metrics))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training never logged a step"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint(corpus, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start_run(corpus, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "--resume" in err
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["event"] == "end" and rows[-1]["reason"] == "interrupted"
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == rows[-1]["step"] >= 5


def test_stop_file_stops_cooperatively(corpus, tmp_path):
    """The GUI's stop: a STOP file in out_dir makes the loop save, remove the file and end normally."""
    out = tmp_path / "run"
    proc = start_run(corpus, out)
    (out / "STOP").touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["reason"] == "interrupted"
    assert load_checkpoint(out / "ckpt.pt")["step"] == rows[-1]["step"]
    assert not (out / "STOP").exists()
