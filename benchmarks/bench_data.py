"""Data at scale: tokenisation speed, and peak memory while training from a memmapped token file.

    python benchmarks/bench_data.py                  # speed (char, BPE), then memory with char on 1 GiB of text
    python benchmarks/bench_data.py --skip_rss       # tokenisation speed only (a minute)
    python benchmarks/bench_data.py --gib 2 --rss_tokenizers char,bpe --json out/bench_data.json

Part 1, tokenisation speed, on --text (default: WikiText-2 valid, cleaned, from ../shared/data, else the
included corpus, repeated to --speed_mib MiB), for each tokenizer: building the tokenizer (char: one
streaming pass collecting characters; BPE: training the merges with `tokenizers`), then the streaming pass
that writes tokens.bin (read, decode, encode, write). Both in MiB of source text per second of wall time.

Part 2, peak resident memory: a pseudo-English text file of --gib GiB is generated (words from a fixed list,
sentences of random length, so it is not one repeated block), then `train_tinyllm.py --memmap_dataset` runs
twice as a subprocess on it: first run tokenises the file into tokens.bin and trains --steps steps; the second
reuses tokens.bin and trains again. The peak RSS of each process (getrusage of the child, so the kernel's own
high-water mark) must stay under 1 GiB; the benchmark fails otherwise. BPE is slower to train and apply (a
few MiB/s per core), so it is left out of this part unless --rss_tokenizers asks for it.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import describe, entry, machine, positive_int, table, write_json  # noqa: E402
from tinyllm import data as D  # noqa: E402
from tinyllm import tokens as T  # noqa: E402
from tinyllm.config import Config  # noqa: E402
from tinyllm.wikitext import clean_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext2_valid.tokens.txt"
RSS_LIMIT_MIB = 1024

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an had they you were their one all we can her has there been if more when will would who so no time "
         "river mountain village letter winter garden window morning evening station harbour market engine "
         "quietly suddenly carefully remembered discovered carried walked opened answered promised").split()


def default_text(work: Path, min_mib: float) -> Path:
    """Cleaned WikiText-2 valid (else the included corpus), repeated to at least `min_mib` MiB so the
    timings are long enough to mean something."""
    src = REPO / "data" / "tiny_corpus.txt"
    if WIKITEXT.is_file():
        src = work / "wikitext2_valid_clean.txt"
        clean_file(WIKITEXT, src)
    data = src.read_bytes()
    out = work / "speed_text.txt"
    out.write_bytes(data * max(1, int(-(-min_mib * 2**20 // len(data)))))
    return out


def tokenisation_speed(text: Path, work: Path, vocab: int) -> list[dict]:
    size_mib = text.stat().st_size / 2**20
    rows = []
    for kind in ("char", "bpe"):
        cfg = Config(data_path=str(text), out_dir=str(work / f"speed_{kind}"), tokenizer=kind, bpe_vocab_size=vocab,
                     memmap_dataset=True)
        t0 = time.perf_counter()
        tok, origin = D.build_tokenizer(cfg, None)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        train, val, _ = T.memmap_tokens(cfg, tok, origin)
        t_encode = time.perf_counter() - t0
        n = len(train) + len(val)
        rows.append({"tokenizer": kind, "vocab_size": tok.vocab_size, "source_mib": round(size_mib, 2),
                     "tokens": n, "bytes_per_token": round(text.stat().st_size / n, 3),
                     "build_s": round(t_build, 2), "build_mib_s": round(size_mib / t_build, 2),
                     "encode_s": round(t_encode, 2), "encode_mib_s": round(size_mib / t_encode, 2)})
        print(f"{kind}: built in {t_build:.2f} s, tokenised in {t_encode:.2f} s", file=sys.stderr)
    return rows


def generate_text(path: Path, gib: float, seed: int = 0) -> None:
    """Pseudo-English lines until the file holds `gib` GiB, written in 4 MiB blocks (constant memory)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(50_000):
        words = rng.choices(WORDS, k=rng.randint(4, 24))
        lines.append(" ".join(words).capitalize() + ".\n")
    target, written = int(gib * 2**30), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            block = "".join(rng.choices(lines, k=60_000))
            f.write(block)
            written += len(block)  # ASCII: characters are bytes


def run_measured(args: list[str]) -> tuple[int, float, float, str]:
    """Run the trainer in a child process; returns (exit status, peak RSS in MiB, seconds, stderr tail)."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr[:3000] + p.stderr[-3000:]); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, str(REPO / "train_tinyllm.py"), *args],
                         capture_output=True, text=True, cwd=REPO)
    dt = time.perf_counter() - t0
    code, rss_kib = out.stdout.split()
    return int(code), int(rss_kib) / 1024, dt, out.stderr


def peak_rss(big: Path, work: Path, kind: str, steps: int, vocab: int, workers: int) -> list[dict]:
    out = work / f"rss_{kind}"
    args = ["--data_path", str(big), "--out_dir", str(out), "--memmap_dataset", "--tokenizer", kind,
            "--bpe_vocab_size", str(vocab), "--max_steps", str(steps), "--eval_interval", str(steps),
            "--eval_iters", "10", "--sample_interval", "0", "--checkpoint_interval", "0", "--no-progress",
            "--dataloader_workers", str(workers), "--overwrite"]
    rows = []
    for phase in ("tokenise + train", "reuse tokens.bin + train"):
        code, rss, dt, err = run_measured(args)
        if code != 0:
            raise SystemExit(f"error: the {kind} training run failed ({code}):\n{err}")
        bin_mib = (out / T.TOKENS_BIN).stat().st_size / 2**20
        # The trainer reports its streaming pass as "data: tokenised X MiB into N tokens in T s (R MiB/s)".
        speed = re.search(r"data: tokenised .* \(([\d.]+) MiB/s\)", err)
        rows.append({"tokenizer": kind, "phase": phase, "text_gib": round(big.stat().st_size / 2**30, 2),
                     "tokens_bin_mib": round(bin_mib), "steps": steps, "workers": workers,
                     "tokenise_mib_s": float(speed.group(1)) if speed else None,
                     "peak_rss_mib": round(rss), "wall_s": round(dt, 1)})
        print(f"{kind} / {phase}: peak RSS {rss:.0f} MiB in {dt:.0f} s", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default="", help="text for the speed part (default: cleaned WikiText-2 valid, repeated)")
    p.add_argument("--speed_mib", type=float, default=8.0, help="size the default speed text is repeated to")
    p.add_argument("--bpe_vocab_size", type=int, default=4096)
    p.add_argument("--gib", type=float, default=1.0, help="size of the generated text for the memory part")
    p.add_argument("--rss_tokenizers", default="char", help="tokenizers for the memory part, e.g. char,bpe")
    p.add_argument("--steps", type=positive_int, default=50, help="training steps of each memory run")
    p.add_argument("--workers", type=int, default=0, help="--dataloader_workers of the memory runs")
    p.add_argument("--skip_rss", action="store_true", help="only the tokenisation speed part")
    p.add_argument("--workdir", default="", help="where to put the generated files (default: a temp folder)")
    p.add_argument("--json", default="", help="also write the results to this file")
    a = p.parse_args(argv)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="tinyllm_bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine(torch.device("cpu"))
    print(f"machine: {describe(info)}", file=sys.stderr)
    result: dict = {"benchmark": "data", "machine": info}
    try:
        text = Path(a.text) if a.text else default_text(work, a.speed_mib)
        result["speed_text"] = str(text)
        result["speed"] = tokenisation_speed(text, work, a.bpe_vocab_size)
        print(table(["tokenizer", "vocab", "text MiB", "bytes/token", "build MiB/s", "tokenise MiB/s"],
                    [[r["tokenizer"], r["vocab_size"], r["source_mib"], r["bytes_per_token"], r["build_mib_s"],
                      r["encode_mib_s"]] for r in result["speed"]]))
        if not a.skip_rss:
            big = work / "generated.txt"
            t0 = time.perf_counter()
            generate_text(big, a.gib)
            print(f"generated {big} ({big.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
            rows = []
            for kind in [k for k in a.rss_tokenizers.split(",") if k]:
                rows += peak_rss(big, work, kind, a.steps, a.bpe_vocab_size, a.workers)
            result["rss"] = rows
            print()
            print(table(["tokenizer", "phase", "text GiB", "tokens.bin MiB", "tokenise MiB/s", "peak RSS MiB",
                         "wall s"],
                        [[r["tokenizer"], r["phase"], r["text_gib"], r["tokens_bin_mib"], r["tokenise_mib_s"] or "-",
                          r["peak_rss_mib"], r["wall_s"]] for r in rows]))
            worst = max(r["peak_rss_mib"] for r in rows) if rows else 0
            result["rss_ok"] = worst < RSS_LIMIT_MIB
            if not result["rss_ok"]:
                write_json(result, a.json)
                raise SystemExit(f"error: peak RSS {worst} MiB is over the {RSS_LIMIT_MIB} MiB limit")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    write_json(result, a.json)
    return result


if __name__ == "__main__":
    entry(main)
