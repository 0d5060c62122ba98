"""Lion and Muon (tinyllm.optimizers): their update rules, Newton-Schulz orthogonalisation, and Muon's split of
the parameters between its own update and AdamW's."""

import pytest
import torch
from conftest import tiny_model

from tinyllm.config import Config
from tinyllm.optim import make_optimizer
from tinyllm.optimizers import Lion, Muon, newton_schulz


def test_lion_step_is_signed_interpolation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.state[p]["exp_avg"] = torch.tensor([1.0, 1.0, -1.0])
    p.grad = torch.tensor([-20.0, 0.5, 0.5])
    opt.step()
    # update = sign(0.9*m + 0.1*g) = sign([-1.1, 0.95, -0.85]); p = p*(1 - lr*wd) - lr*update
    expected = torch.tensor([1.0, -2.0, 3.0]) * 0.95 - 0.1 * torch.tensor([-1.0, 1.0, -1.0])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], torch.tensor([0.99 - 0.2, 0.99 + 0.005, -0.99 + 0.005]))


def test_newton_schulz_orthogonalises_batches():
    g = torch.randn(3, 16, 48)
    o = newton_schulz(g, steps=5)
    sv = torch.linalg.svdvals(o)
    assert o.shape == g.shape and sv.min() > 0.5 and sv.max() < 1.3
    tall = newton_schulz(torch.randn(48, 16))
    assert torch.linalg.svdvals(tall).min() > 0.5


def test_muon_beats_adamw_on_a_fixed_problem():
    """Memorising one fixed batch with a tiny GPT, equal steps, each optimizer at its best lr of a small grid:
    Muon reaches a clearly lower loss than AdamW."""
    torch.manual_seed(0)
    x = torch.randint(0, 32, (16, 32))
    y = torch.roll(x, -1, 1)

    def final_loss(**kw):
        model = tiny_model(seed=1, vocab_size=32, n_embd=64, block_size=32)
        opt = make_optimizer(model, Config(weight_decay=0.0, **kw), torch.device("cpu"))
        for _ in range(30):
            model(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
        return model(x, y)[1].item()

    adamw = min(final_loss(lr=lr) for lr in (1e-3, 3e-3, 1e-2))
    muon = min(final_loss(optimizer="muon", lr=3e-3, muon_lr=lr) for lr in (0.01, 0.02, 0.05))
    assert muon < 0.7 * adamw


def test_muon_groups_cover_every_parameter_once():
    model = tiny_model()
    opt = make_optimizer(model, Config(optimizer="muon"), torch.device("cpu"))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon) == (name.startswith("blocks.") and p.dim() == 2), name


def test_muons_adamw_groups_step_exactly_as_torch_adamw():
    """The parameters Muon leaves to AdamW (embeddings, head, norms, biases) get AdamW's update: decoupled
    weight decay and bias-corrected moments, step for step the same as torch's."""
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    mine, ref = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    opt = Muon([{"params": [mine], "use_muon": False, "lr": 0.01, "weight_decay": 0.1}], betas=(0.9, 0.95))
    torch_opt = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn(5, 3)
        mine.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(mine.detach(), ref.detach(), atol=1e-6, rtol=1e-5)
    assert not torch.equal(mine.detach(), w)


def test_muons_adamw_group_steps_many_tensors_at_once_as_torch_adamw():
    """The group's tensors are updated together (foreach); a tensor that had no gradient at some step keeps its
    own step count and bias correction, as in torch's AdamW."""
    torch.manual_seed(0)
    start = [torch.randn(s) for s in [(5, 3), (7,), (2, 2, 2)]]
    mine = [torch.nn.Parameter(w.clone()) for w in start]
    ref = [torch.nn.Parameter(w.clone()) for w in start]
    opt = Muon([{"params": mine, "use_muon": False, "lr": 0.01, "weight_decay": 0.1}], betas=(0.9, 0.95))
    torch_opt = torch.optim.AdamW(ref, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    for step in range(6):
        for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
            g = None if (i == 1 and step in (1, 2)) else torch.randn_like(a)
            a.grad, b.grad = (None, None) if g is None else (g.clone(), g.clone())
        opt.step()
        torch_opt.step()
    assert [opt.state[p]["step"] for p in mine] == [6, 4, 6]
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)


def test_muon_steps_matrices_of_one_shape_together_as_one_by_one():
    torch.manual_seed(0)
    shapes = [(8, 4), (8, 4), (4, 8)]
    start = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]

    def run(groups_of):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = Muon([{"params": g, "use_muon": True, "lr": 0.02} for g in groups_of(params)], ns_dtype=torch.float32)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        return [p.detach() for p in params]

    together, alone = run(lambda ps: [ps]), run(lambda ps: [[p] for p in ps])
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # tall matrices move more per element: sqrt(rows / cols)
    moved = [(a - w).norm() / w.numel() ** 0.5 for a, w in zip(together, start, strict=True)]
    assert moved[0] == pytest.approx(2 ** 0.5 * moved[2], rel=0.1)
