"""Shared fixtures: a small generated corpus, tiny model flags and a way to run the CLI in-process."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyllm.cli import main
from tinyllm.model import GPT, ModelArgs

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "8",
        "--eval_iters", "2", "--log_interval", "5", "--sample_interval", "0", "--lr", "1e-2",
        "--lr_warmup_steps", "2", "--no-progress"]
# The GPT-2-style architecture (the default preset's before it took the modern recipe): tests of the exporters
# and importers, whose targets are these parts, pin it so that a change of the default recipe leaves them alone.
CLASSIC = ["--pos_encoding", "learned", "--norm", "layernorm", "--mlp", "gelu", "--no-qk_norm", "--bias",
           "--no-weight_tying"]


def make_text(n_words: int = 6000, seed: int = 0) -> str:
    """Pseudo-English with real structure (a small vocabulary, sentences, lines) so a model can learn it."""
    rng = random.Random(seed)
    words = ("the cat sat on a warm mat and the dog ran to the old red barn while rain fell softly "
             "over green hills where small birds sang").split(" ")
    out, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(words))
        if rng.random() < 0.12:
            out.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(out) + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


# Text with multi-byte characters, CRLF and blank lines, so chunk edges land in awkward places.
ODD_TAIL = "Ünïcödé 🙂 text\r\n\r\n  with CJK 日本語 and e\u0301 marks.\n"


def corpus_text(n_words: int = 3000, seed: int = 0) -> str:
    lines = make_text(n_words, seed).splitlines(keepends=True)
    return "".join(line + (ODD_TAIL if i % 7 == 0 else "") for i, line in enumerate(lines))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(corpus_text(), encoding="utf-8")
    return p


def exit_status(entry, args) -> int:
    """Run an entry point's main(argv) in this process and return its exit status."""
    try:
        entry([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def run_cli(args: list[str]) -> int:
    """Run the training CLI in this process and return its exit status."""
    return exit_status(main, args)


def tiny_trained_run(tmp: Path, steps: int = 20) -> Path:
    """A TINY model trained `steps` steps on make_text() under tmp/run (for module-scoped fixtures)."""
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", steps, "--eval_interval", "0"]) == 0
    return out


def run_subprocess(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train_tinyllm.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, **kw)


def tiny_trainer(corpus: Path, out: Path, **settings):
    """A real single-process Trainer on the CPU for a tiny model, to drive train_step by hand (close() it)."""
    from tinyllm import config as C
    from tinyllm import distributed
    from tinyllm.train import Trainer

    values = {"data_path": str(corpus), "out_dir": str(out), "n_layer": 1, "n_head": 2, "n_embd": 32,
              "block_size": 16, "batch_size": 4, "device": "cpu", "progress": False} | settings
    return Trainer(C.validate(C.from_dict(values)), None, distributed.setup(False, "auto"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(seed=0, **kw):
    """A tiny GPT, seeded (13 tokens, 2 layers, width 16, block 8; `kw` overrides ModelArgs)."""
    torch.manual_seed(seed)
    return GPT(ModelArgs(**({"vocab_size": 13, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8} | kw)))


def checkpoint_state(config: dict, step: int = 3) -> dict:
    """A complete checkpoint as a training run writes one, with a tiny model's weights, for tests of what reads
    checkpoints (config resolution, the CLI) rather than of training: its config need not be the model's."""
    from tinyllm.checkpoint import FORMAT_VERSION
    from tinyllm.tokenizer import CharTokenizer

    model = tiny_model()
    return {"format_version": FORMAT_VERSION, "config": config, "model_args": model.args.to_dict(),
            "model": model.state_dict(), "tokenizer": CharTokenizer(list("\n abc")).to_json(), "step": step,
            "optimizer": {}, "data_state": {}, "rng": {}, "tokens_seen": 0, "best_val_loss": float("inf"),
            "time_s": 0.0}


@pytest.fixture
def fake_clock(monkeypatch):
    """tinyllm.train's clock made of the work done: each training step takes `step_s` seconds, each
    evaluation `eval_s`, nothing else any time, so time-budget tests do not depend on the machine's speed."""
    from types import SimpleNamespace

    from tinyllm import train as T

    clock = SimpleNamespace(now=0.0, step_s=1.0, eval_s=0.0)
    monkeypatch.setattr(T, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def timed(method, duration):
        def run(self, *args):
            clock.now += getattr(clock, duration)
            return method(self, *args)
        return run

    monkeypatch.setattr(T.Trainer, "train_step", timed(T.Trainer.train_step, "step_s"))
    monkeypatch.setattr(T.Trainer, "eval_and_keep_best", timed(T.Trainer.eval_and_keep_best, "eval_s"))
    return clock


def greedy_hf(hf, prompt, n: int) -> list[int]:
    """n greedy tokens from a transformers model, end-of-text or not: transformers fills an unset eos_token_id
    from the model's own generation config (and would stop there, or with min_new_tokens forbid that token
    where tinyllm may pick it)."""
    import transformers

    hf.generation_config.eos_token_id = None
    gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                        bos_token_id=None, pad_token_id=0)
    return hf.generate(prompt, generation_config=gen)[0, prompt.shape[1]:].tolist()
