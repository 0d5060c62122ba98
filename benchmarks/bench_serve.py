"""Serving throughput of tinyllm-serve: requests/s and tokens/s for 1 and 8 concurrent clients.

    python benchmarks/bench_serve.py --json benchmarks/results/serve_cpu.json         # the default preset
    python benchmarks/bench_serve.py --out_dir out/tiny_char_gpt --parallel 1 4 8      # a trained run

The server is the real command, `python -m tinyllm.serve`, in its own process on a free loopback port; the
clients are threads of this process sending plain HTTP requests to /v1/completions. Without --out_dir, a
model of the preset (--config, default config/tiny_char_gpt.json) is trained for one step in a temporary
folder (speed does not depend on the weights; extra training flags go after --). Every request asks for
--max_tokens tokens with the run's own prompt, temperature --temperature and its own seed; the tokens
counted are those the server reports in `usage`. One server runs for each setting of --parallel
(completions generated at once), all at the same time. In each of --rounds rounds, every (server, number of
clients) pair is measured in turn, so a change in the machine's load hits all of them alike: every client
sends --requests requests one after the other; requests/s and tokens/s are the totals over the wall time
from the first request to the last answer. The table shows the median round and the best one (the least
disturbed by other work), after one warm-up request per server. The latency is each request's time to its
whole answer (the median over the median round's requests).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="", help="a trained run to serve; empty = train a throwaway one")
    p.add_argument("--config", default="config/tiny_char_gpt.json", help="preset of the throwaway run")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="numbers of concurrent clients")
    p.add_argument("--requests", type=int, default=4, help="requests each client sends, one after the other")
    p.add_argument("--rounds", type=common.positive_int, default=3, help="rounds over every (server, clients) pair")
    p.add_argument("--max_tokens", type=int, default=100, help="tokens asked for per request")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--parallel", type=int, nargs="+", default=[4],
                   help="tinyllm-serve --parallel settings to measure (4 is the server's default)")
    p.add_argument("--device", default="cpu", help="the server's --device")
    p.add_argument("--threads", type=int, default=0, help="the server's torch threads (OMP_NUM_THREADS); 0 = default")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server to start")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("train_args", nargs="*", help="flags for the throwaway run's training, after --")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_throwaway(a: argparse.Namespace, folder: str) -> str:
    cmd = [sys.executable, "train_tinyllm.py", "--config", a.config, "--out_dir", folder, "--max_steps", "1",
           "--eval_interval", "0", "--sample_interval", "0", "--no-progress", "--device", a.device, *a.train_args]
    proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"training the throwaway run failed (exit status {proc.returncode}): {' '.join(cmd)}")
    return folder


def get(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


class Server:
    """`python -m tinyllm.serve` in its own process, for the length of a `with` block."""

    def __init__(self, run: str, parallel: int, a: argparse.Namespace):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "tinyllm.serve", "--out_dir", run, "--port", str(self.port),
                    "--parallel", str(parallel), "--max_tokens_cap", str(max(a.max_tokens, 1)),
                    "--device", a.device, "--log_level", "warning"]
        self.env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads > 0 else {})}
        self.timeout = a.timeout

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, cwd=common.REPO, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                text = self.log.read()[-4000:]
                self.log.close()
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{text}")
            try:
                self.model = get(self.url + "/v1/models", timeout=2)["data"][0]["id"]
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the server did not answer within {self.timeout:.0f} s") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def measure(server: Server, clients: int, a: argparse.Namespace) -> dict[str, Any]:
    url = server.url + "/v1/completions"

    def one(seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = post(url, {"model": server.model, "max_tokens": a.max_tokens, "temperature": a.temperature,
                       "seed": seed})
        return time.perf_counter() - t0, r["usage"]["completion_tokens"]

    def client(c: int) -> list[tuple[float, int]]:
        return [one(c * 1000 + i) for i in range(a.requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for per_client in pool.map(client, range(clients)) for x in per_client]
    wall = time.perf_counter() - t0
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 3),
            "requests_per_sec": len(results) / wall, "tokens_per_sec": tokens / wall,
            "latency_median_s": statistics.median(t for t, _ in results),
            "latency_max_s": max(t for t, _ in results)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    m = common.machine(torch.device(a.device))
    m["server_threads"] = a.threads or m["threads"]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        run = a.out_dir or train_throwaway(a, tmp)
        servers = {parallel: stack.enter_context(Server(run, parallel, a)) for parallel in a.parallel}
        for server in servers.values():  # warm-up
            post(server.url + "/v1/completions", {"model": server.model, "max_tokens": 8})
        pairs = [(parallel, clients) for parallel in a.parallel for clients in a.clients]
        rounds: dict[tuple[int, int], list[dict[str, Any]]] = {pair: [] for pair in pairs}
        for _ in range(a.rounds):
            for parallel, clients in pairs:
                rounds[parallel, clients].append(measure(servers[parallel], clients, a))
        state = torch.load(Path(run) / "ckpt.pt", map_location="cpu", weights_only=True)
        params = sum(t.numel() for t in state["model"].values())
    rows = []
    for (parallel, clients), measured in rounds.items():
        by_speed = sorted(measured, key=lambda r: r["tokens_per_sec"])
        median, best = by_speed[(len(by_speed) - 1) // 2], by_speed[-1]
        rows.append({"parallel": parallel, "clients": clients, "requests": median["requests"],
                     "tokens": median["tokens"], "requests_per_sec": median["requests_per_sec"],
                     "tokens_per_sec": median["tokens_per_sec"], "tokens_per_sec_best": best["tokens_per_sec"],
                     "requests_per_sec_best": best["requests_per_sec"],
                     "latency_median_s": median["latency_median_s"], "rounds": measured})
    m["load_avg_end"] = common.load_average()
    result = {"benchmark": "serve", "machine": m, "run": a.out_dir or f"{Path(a.config).name}, 1 training step",
              "params": params, "max_tokens": a.max_tokens, "temperature": a.temperature,
              "requests_per_client": a.requests, "rows": rows}
    print(common.describe(m) + (f", {m['load_avg_end'][0]:.2f} at the end" if m["load_avg_end"] else ""))
    print(f"{result['run']} ({params:,} parameters), {a.max_tokens} tokens per request, temperature "
          f"{a.temperature:g}, {a.requests} requests per client, {a.rounds} rounds")
    print(common.table(["--parallel", "clients", "requests/s (median)", "tokens/s (median)", "tokens/s (best)",
                        "latency (s)"],
                       [[r["parallel"], r["clients"], f"{r['requests_per_sec']:.2f}", f"{r['tokens_per_sec']:,.0f}",
                         f"{r['tokens_per_sec_best']:,.0f}", f"{r['latency_median_s']:.2f}"] for r in rows]))
    common.write_json(result, a.json)
    return result


if __name__ == "__main__":
    common.entry(main)
