"""The KV cache: incremental logits equal full recomputation, and generation with and without it picks the
same tokens, for every architecture option, including past block_size and from prompts longer than it."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, run_cli
from test_model import BASE, COMBOS, make

from tinyllm.generate import SamplingParams, generate

combos = pytest.mark.parametrize("combo", list(COMBOS.values()), ids=list(COMBOS))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: on a busy 2-core machine a second thread costs more than it saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tokens(model, idx, n, params, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.cat(list(generate(model, idx, n, params, gen)), dim=1)


@combos
def test_cached_incremental_logits_equal_full_recomputation(combo):
    model = make(seed=2, **combo).eval()
    idx = torch.randint(0, BASE["vocab_size"], (2, BASE["block_size"]))
    full = model(idx)[0]
    cache = model.new_cache()
    pieces, pos = [], 0
    for n in (5, 1, 1, 3, 1, 2, 1, 1, 1):  # a prompt, single steps, and chunks that start mid-cache
        pieces.append(model(idx[:, pos:pos + n], cache=cache)[0])
        pos += n
    assert pos == BASE["block_size"] and cache.pos == pos
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=0)


@combos
def test_greedy_generation_is_identical_with_and_without_cache(combo):
    model = make(seed=5, **combo)
    prompt = torch.randint(0, BASE["vocab_size"], (2, 21))  # longer than block_size (16)
    for p in (SamplingParams(temperature=0), SamplingParams(temperature=0, repetition_penalty=1.3)):
        recomputed = tokens(model, prompt, 45, p)  # well past block_size: the window is cut several times
        cached = tokens(model, prompt, 45, SamplingParams(**{**vars(p), "kv_cache": True}))
        assert torch.equal(recomputed, cached)
    assert model.training  # generate restores the mode it found


@pytest.mark.parametrize("combo", [COMBOS["baseline"], COMBOS["all_rope"]], ids=["baseline", "all_rope"])
def test_sampled_generation_is_identical_with_and_without_cache(combo):
    model = make(seed=6, **combo)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    p = SamplingParams(temperature=1.0, top_k=10, top_p=0.95)
    recomputed = tokens(model, prompt, 40, p, seed=3)
    cached = tokens(model, prompt, 40, SamplingParams(**{**vars(p), "kv_cache": True}), seed=3)
    assert torch.equal(recomputed, cached)


def test_cache_runs_one_position_per_step_and_refills_from_the_kept_half():
    model = make(block_size=8)
    lengths, positions = [], []
    original = model.forward

    def spy(idx, targets=None, cache=None):
        lengths.append(idx.shape[1])
        positions.append(cache.pos)
        return original(idx, targets, cache)

    model.forward = spy
    list(generate(model, torch.zeros(1, 3, dtype=torch.long), 10, SamplingParams(temperature=0, kv_cache=True)))
    # Uncached, the same run sees contexts of 3, 4, 5, 6, 7, 8, then 5 (the last 4 + the new token), 6, 7, 8.
    assert lengths == [3, 1, 1, 1, 1, 1, 5, 1, 1, 1]
    assert positions == [0, 3, 4, 5, 6, 7, 0, 5, 6, 7]
    lengths.clear()  # the keyword overrides SamplingParams.kv_cache (the GUI passes it)
    list(generate(model, torch.zeros(1, 3, dtype=torch.long), 4, SamplingParams(temperature=0), kv_cache=True))
    assert lengths == [3, 1, 1, 1]


def test_cache_is_preallocated_once():
    model = make(n_kv_head=2).eval()
    cache = model.new_cache()
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    k0 = cache.k[0]
    assert k0.shape == (1, 2, BASE["block_size"], BASE["n_embd"] // BASE["n_head"])  # kv heads, full length
    ptr = k0.data_ptr()
    for _ in range(12):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    cache.reset()
    model(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    assert cache.k[0].data_ptr() == ptr and cache.pos == 9
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 8, dtype=torch.long), cache=cache)


def test_cache_takes_the_dtype_of_an_autocast_forward():
    model = make(pos_encoding="rope").eval()
    cache = model.new_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        logits = model(torch.zeros(1, 1, dtype=torch.long), cache=cache)[0]
    assert cache.k[0].dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_cli_generation_with_and_without_cache_is_identical(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "20", "--eval_interval", "0",
                    "--pos_encoding", "rope", "--sliding_window", "12", "--n_layer", "2"]) == 0
    capsys.readouterr()
    texts = []
    for flag in ("--kv_cache", "--no-kv_cache"):
        # 100 new characters with block_size 32: the window is cut several times
        assert run_cli(["--out_dir", out, "--generate_only", flag, "--temperature", "0", "--sample_chars", "100",
                        "--prompt", "The cat sat on the warm mat and the dog ran"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 100


def test_generation_benchmark_runs_and_checks_the_tokens(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_generate

    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "pos_encoding": "rope"}))
    result = bench_generate.main(["--config", str(preset), "--block_size", "16", "--new_tokens", "40",
                                  "--rounds", "1", "--json", str(tmp_path / "r.json")])
    assert result["same_tokens"] and result["speedup_best"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["new_tokens"] == 40
