import pytest
import torch

from tinyllm.data import BatchSampler, check_split_lengths, read_text, split_ids
from tinyllm.errors import UserError


def test_read_text_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="is a directory"):
        read_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        read_text(empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf" + b"\xe9 ok")
    with pytest.raises(UserError, match="byte offset 3"):
        read_text(bad)


def test_split_takes_the_end_for_validation():
    ids = torch.arange(100)
    train, val = split_ids(ids, 0.1)
    assert train.tolist() == list(range(90))
    assert val.tolist() == list(range(90, 100))


def test_split_too_short():
    with pytest.raises(UserError, match="--block_size 16 needs at least 17"):
        check_split_lengths(torch.arange(100), torch.arange(10), 16, need_val=True, source="x")
    check_split_lengths(torch.arange(100), torch.arange(10), 16, need_val=False, source="x")


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
