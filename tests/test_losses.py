"""The training objective (tinyllm.losses): cross-entropy, label smoothing and the z-loss."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from tinyllm.losses import training_loss


def test_z_loss_lowers_logsumexp():
    torch.manual_seed(0)
    x = torch.randint(0, 13, (8, 8))
    y = torch.randint(0, 13, (8, 8))
    results = {}
    for coef in (0.0, 0.1):
        model = tiny_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(30):
            ce, z = training_loss(model(x)[0], y, z_coef=coef)
            (ce if z is None else ce + z).backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            results[coef] = torch.logsumexp(model(x)[0], -1).pow(2).mean().item()
    assert results[0.1] < 0.5 * results[0.0]


def test_z_loss_value():
    logits = torch.randn(2, 3, 5)
    _, z = training_loss(logits, torch.zeros(2, 3, dtype=torch.long), z_coef=0.5)
    assert z.item() == pytest.approx(0.5 * torch.logsumexp(logits, -1).pow(2).mean().item(), rel=1e-6)


def test_without_z_loss_the_objective_is_torchs_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, dtype=torch.bfloat16)
    targets = torch.randint(0, 7, (2, 4))
    ce, z = training_loss(logits, targets)
    assert z is None and ce.dtype == torch.float32  # computed in fp32 whatever the logits' dtype
    flat = logits.float().reshape(-1, 7)
    assert ce.item() == pytest.approx(F.cross_entropy(flat, targets.reshape(-1)).item(), rel=1e-6)
    smoothed, _ = training_loss(logits, targets, label_smoothing=0.2)
    expected = F.cross_entropy(flat, targets.reshape(-1), label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6) and smoothed.item() != ce.item()
