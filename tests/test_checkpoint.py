"""Saving and loading checkpoints (tinyllm.checkpoint): the one loader and what it refuses, the prefixes it
strips, and the RNG state a resume restores. End to end (a killed run, a pickle that runs code, a full disk)
the same promises are in tests/test_safety.py and tests/test_bad_input.py."""

import random

import numpy as np
import pytest
import torch

from tinyllm import checkpoint as ckpt_io
from tinyllm.checkpoint import FORMAT_VERSION, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from tinyllm.errors import UserError


def minimal(**extra):
    return {"format_version": FORMAT_VERSION, "config": {"lr": 0.1}, "model_args": {"n_layer": 1},
            "model": {"w": torch.arange(6.0).reshape(2, 3)}, "tokenizer": "{}", "step": 7} | extra


def test_round_trip_of_plain_values(tmp_path):
    state = minimal(best_val_loss=1.5, data_state={"order": [3, 1, 2], "seed": 0}, rng=capture_rng())
    save_checkpoint(state, tmp_path / "ckpt.pt")
    got = load_checkpoint(tmp_path / "ckpt.pt")
    assert got["step"] == 7 and got["config"] == {"lr": 0.1} and got["data_state"] == state["data_state"]
    assert torch.equal(got["model"]["w"], state["model"]["w"])
    assert not [p for p in tmp_path.iterdir() if p.name != "ckpt.pt"]  # no temporary file left behind


def test_wrappers_prefixes_are_stripped(tmp_path):
    w = torch.ones(1)
    assert list(ckpt_io.strip_prefixes({"_orig_mod.module.head.weight": w, "module._orig_mod.b": w, "module.a": w,
                                "blocks.0._orig_mod.attn.qkv": w, "plain": w})) == \
        ["head.weight", "b", "a", "blocks.0.attn.qkv", "plain"]
    save_checkpoint(minimal(model={"_orig_mod.head.weight": w}), tmp_path / "ckpt.pt")
    assert list(load_checkpoint(tmp_path / "ckpt.pt")["model"]) == ["head.weight"]


def test_what_the_loader_refuses(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "junk.pt")
    state = minimal()
    del state["tokenizer"]
    save_checkpoint(state, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="not a tinyllm checkpoint"):
        load_checkpoint(tmp_path / "partial.pt")
    save_checkpoint(minimal(format_version=FORMAT_VERSION + 1), tmp_path / "newer.pt")
    with pytest.raises(UserError, match="written by a newer tinyllm"):
        load_checkpoint(tmp_path / "newer.pt")


def test_a_state_that_cannot_be_saved_leaves_the_old_file(tmp_path):
    save_checkpoint(minimal(), tmp_path / "ckpt.pt")
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint(minimal(bad=lambda: None), tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_rng_state_survives_a_checkpoint_and_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(minimal(rng=capture_rng()), tmp_path / "ckpt.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "ckpt.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]
