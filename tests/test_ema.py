"""The exponential moving average of the weights (tinyllm.ema)."""

import torch

from tinyllm.ema import EMA


def test_ema_matches_hand_computation():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for e, got in zip(expected, ema.model.parameters(), strict=True):
        assert torch.allclose(e, got, atol=1e-7)


def test_a_step_flagged_non_finite_leaves_the_average_alone():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    assert all(not p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, ema.model.parameters(), strict=True))
    ema.update(torch.tensor(True))  # the same as a plain update
    for b, e, p in zip(before, ema.model.parameters(), model.parameters(), strict=True):
        assert torch.allclose(e, 0.5 * b + 0.5 * p.detach(), atol=1e-7)


def test_buffers_are_copied_and_the_state_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    model(torch.randn(8, 3))  # training mode: BatchNorm's running statistics move
    ema.update()
    bn, ema_bn = model[1], ema.model[1]
    assert torch.equal(ema_bn.running_mean, bn.running_mean) and ema_bn.num_batches_tracked == 1
    other = EMA(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
