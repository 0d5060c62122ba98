"""The GUI's streaming generation (tinyllm.gui.generation), without gradio: the sampling settings checked as the
CLI checks them, the checkpoint loaded once, and text streamed a token at a time."""

from __future__ import annotations

import os

import pytest
from conftest import tiny_model

from tinyllm.checkpoint import FORMAT_VERSION, save_checkpoint
from tinyllm.errors import UserError
from tinyllm.gui.generation import Generator, kv_cache_param, sampling_config
from tinyllm.tokenizer import CharTokenizer

CHARS = list("\n abcdefghijk")  # 13 characters: tiny_model's vocabulary


@pytest.fixture
def run(tmp_path):
    model = tiny_model(seed=3)
    state = {"format_version": FORMAT_VERSION, "config": {}, "model_args": model.args.to_dict(),
             "model": model.state_dict(), "tokenizer": CharTokenizer(CHARS).to_json(), "step": 0}
    save_checkpoint(state, tmp_path / "ckpt.pt")
    return tmp_path


def test_sampling_settings_are_checked_like_the_flags():
    cfg = sampling_config(0.7, 5.0, 0.9, 1.1, 7.0, 20.0)  # number boxes hand back floats
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.seed, cfg.sample_chars) == \
        (0.7, 5, 0.9, 1.1, 7, 20)
    assert isinstance(cfg.top_k, int) and isinstance(cfg.sample_chars, int)
    with pytest.raises(UserError, match="--top_k must be a whole number"):
        sampling_config(0.7, 2.5, 0.9, 1.1, 7, 20)
    with pytest.raises(UserError, match="--seed needs a value"):
        sampling_config(0.7, 5, 0.9, 1.1, None, 20)
    with pytest.raises(UserError, match="--top_k must be at least 0"):
        sampling_config(0.7, -1, 0.9, 1.1, 7, 20)
    with pytest.raises(UserError, match="--top_p must be at most 1.0"):
        sampling_config(0.7, 5, 1.5, 1.1, 7, 20)
    with pytest.raises(UserError, match=r"New tokens \(--sample_chars\) must be at least 1"):  # the field's name
        sampling_config(0.7, 5, 0.9, 1.1, 7, 0)


def test_the_kv_cache_switch_is_found_on_generate():
    assert kv_cache_param() == "kv_cache"


def test_load_refuses_a_missing_checkpoint_and_caches_the_model(run):
    gen = Generator()
    with pytest.raises(UserError, match="--ckpt must be one of last, best"):
        gen.load(run, "middle")
    with pytest.raises(UserError, match="ckpt_best.pt does not exist"):
        gen.load(run, "best")
    first = gen.load(run)
    assert gen.load(run) is first  # the same file: loaded once
    st = (run / "ckpt.pt").stat()
    os.utime(run / "ckpt.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gen.load(run) is not first  # the file changed (a run saved again): loaded afresh


def test_stream_yields_the_prompt_then_one_longer_text_per_token(run):
    gen = Generator()

    def texts(**kw):
        args = {"which": "last", "prompt": "abc", "max_new_tokens": 12, "temperature": 1.0, "top_k": 0,
                "top_p": 1.0, "repetition_penalty": 1.0, "seed": 5} | kw
        return list(gen.stream(run, **args))

    out = texts()
    assert out[0] == "abc" and len(out) == 13
    assert all(b.startswith(a) and len(b) == len(a) + 1 for a, b in zip(out, out[1:], strict=False))
    assert set(out[-1]) <= set(CHARS)
    assert texts() == out and texts(seed=6) != out  # seeded
    greedy = texts(temperature=0.0, max_new_tokens=20)
    assert texts(temperature=0.0, max_new_tokens=20, kv_cache=True) == greedy
    with pytest.raises(UserError, match="not in the vocabulary"):
        texts(prompt="xyz")
    assert texts(prompt="xyz", drop_unknown=True)[0] == "xyz"
    with pytest.raises(UserError, match="--temperature"):
        texts(temperature=-1.0)
