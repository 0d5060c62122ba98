"""Training batches: the in-process sampler, DataLoader workers (the same batches for a seed whatever the
worker count, exact resume, no global RNG) and the curriculum on block size."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, run_cli

from tinyllm.batches import (
    BatchSampler,
    LoaderSampler,
    WindowBatches,
    curriculum_block_size,
    curriculum_sizes,
    make_train_sampler,
    to_device,
)
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.data import prepare
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics

DATA = torch.arange(5000, dtype=torch.int16)


def take(sampler, n: int, block_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [sampler.next(block_size) for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


# --- the in-process sampler ------------------------------------------------------------------------------------


def test_sampler_targets_are_shifted_inputs():
    data = torch.arange(1000)
    x, y = BatchSampler(data, 8, 4, seed=0).next()
    assert x.shape == (4, 8) and y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.long))


def test_sampler_state_resumes_exactly():
    data = torch.arange(5000)
    a = BatchSampler(data, 16, 4, seed=3)
    for _ in range(3):
        a.next()
    state = a.state_dict()
    expected = [a.next()[0] for _ in range(3)]
    b = BatchSampler(data, 16, 4, seed=99)
    b.load_state_dict(state)
    got = [b.next()[0] for _ in range(3)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))


def test_sampler_reaches_the_last_window():
    data = torch.arange(20)
    s = BatchSampler(data, 4, 512, seed=0)
    _, y = s.next()
    assert int(y.max()) == 19  # the final token can be a target


# --- DataLoader workers ----------------------------------------------------------------------------------------


def test_batches_are_windows_with_shifted_targets():
    s = LoaderSampler(DATA, 16, 4, seed=0, workers=1)
    for x, y in take(s, 3):
        assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.long))  # contiguous windows
    s.close()


def test_same_stream_for_any_worker_count_and_seeded():
    one = LoaderSampler(DATA, 16, 4, seed=7, workers=1)
    two = LoaderSampler(DATA, 16, 4, seed=7, workers=2)
    again = LoaderSampler(DATA, 16, 4, seed=7, workers=2)
    other = LoaderSampler(DATA, 16, 4, seed=8, workers=2)
    a, b, c, d = (take(s, 6) for s in (one, two, again, other))
    assert same(a, b) and same(b, c)
    assert not any(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, d, strict=True))
    # Batch k is made from (seed, k) alone: the in-process dataset gives it too.
    direct = WindowBatches(DATA, 16, 4, seed=7)
    assert same(a, [direct[k] for k in range(6)])
    # Consecutive batches differ (the index really moves on).
    assert not torch.equal(a[0][0], a[1][0])
    for s in (one, two, again, other):
        s.close()


def test_state_resumes_exactly():
    s = LoaderSampler(DATA, 16, 4, seed=3, workers=2)
    take(s, 5)
    state = s.state_dict()
    assert state["next_index"] == 5
    expected = take(s, 4)
    t = LoaderSampler(DATA, 16, 4, seed=3, workers=1)  # a different worker count continues the same stream
    t.load_state_dict(state)
    assert same(take(t, 4), expected)
    for x in (s, t):
        x.close()


def test_global_rng_is_untouched():
    before = torch.get_rng_state()
    s = LoaderSampler(DATA, 16, 4, seed=1, workers=2)
    take(s, 3)
    s.close()
    assert torch.equal(torch.get_rng_state(), before)


def test_curriculum_block_size_keeps_the_start_of_each_window():
    s = LoaderSampler(DATA, 16, 4, seed=2, workers=1)
    full = WindowBatches(DATA, 16, 4, seed=2)[0]
    x, y = s.next(8)
    assert x.shape == (4, 8) and torch.equal(x, full[0][:, :8]) and torch.equal(y, full[1][:, :8])
    s.close()


def test_memmap_and_tensor_give_the_same_loader_batches(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    cfg = Config(data_path=str(p), out_dir=str(tmp_path / "run"), block_size=16, batch_size=4, memmap_dataset=True)
    _, train_file, _, _ = prepare(cfg, None)
    _, train_mem, _, _ = prepare(Config(**{**cfg.to_dict(), "memmap_dataset": False}), None)
    a = LoaderSampler(train_file, 16, 4, seed=0, workers=2)
    b = LoaderSampler(train_mem, 16, 4, seed=0, workers=1)
    assert same(take(a, 4), take(b, 4))
    a.close()
    b.close()


def test_switching_sampler_kind_on_resume_is_an_error():
    loader, inproc = LoaderSampler(DATA, 16, 4, seed=0, workers=1), BatchSampler(DATA, 16, 4, seed=0)
    with pytest.raises(UserError, match="--dataloader_workers 0"):
        loader.load_state_dict(inproc.state_dict())
    with pytest.raises(UserError, match="--dataloader_workers 1 or more"):
        inproc.load_state_dict(loader.state_dict())


def test_make_train_sampler_and_to_device():
    cfg = Config(block_size=16, batch_size=4)
    assert isinstance(make_train_sampler(DATA, cfg, 0, torch.device("cpu")), BatchSampler)
    cfg = Config(block_size=16, batch_size=4, dataloader_workers=2)
    s = make_train_sampler(DATA, cfg, 0, torch.device("cpu"))
    assert isinstance(s, LoaderSampler) and s.workers == 2 and s.pin_memory is False
    x, y = to_device(s.next(), torch.device("cpu"))
    assert x.device.type == "cpu" and x.shape == (4, 16)
    s.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_are_pinned_and_copied_without_blocking():
    cfg = Config(block_size=16, batch_size=4, dataloader_workers=1)
    s = make_train_sampler(DATA, cfg, 0, torch.device("cuda"))
    assert s.pin_memory
    x, y = s.next()
    assert x.is_pinned()
    gx, gy = to_device((x, y), torch.device("cuda"))
    assert gx.is_cuda and torch.equal(gx.cpu(), x)
    s.close()


def test_resume_is_bit_identical_with_workers(corpus, tmp_path):
    common = ["--data_path", corpus, *TINY, "--dataloader_workers", "2", "--dropout", "0.1",
              "--lr_decay_steps", "8", "--eval_interval", "4", "--checkpoint_interval", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli([*common, "--out_dir", straight, "--max_steps", "8"]) == 0
    assert run_cli([*common, "--out_dir", split, "--max_steps", "4"]) == 0
    assert run_cli(["--out_dir", split, "--resume", "--max_steps", "8", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(split / "ckpt.pt")
    assert b["step"] == 8 and b["data_state"]["ranks"][0]["next_index"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r and r["step"] > 5]
              for d in (straight, split)]
    assert losses[0] == losses[1]


# --- the curriculum --------------------------------------------------------------------------------------------


def test_curriculum_schedule():
    assert curriculum_sizes(32, 256) == [32, 64, 128, 256]
    assert curriculum_sizes(256, 256) == [256]
    sizes = [curriculum_block_size(s, 32, 256, 300) for s in range(0, 400)]
    assert sizes[0] == 32 and sizes[99] == 32 and sizes[100] == 64 and sizes[200] == 128
    assert sizes[299] == 128 and sizes[300] == 256 and sizes[-1] == 256
    assert sizes == sorted(sizes)
