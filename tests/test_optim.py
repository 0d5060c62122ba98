"""The learning-rate schedules, a pure function of the step (or of the time spent, on a time budget), and the
optimizer factory (tinyllm.optim)."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model

from tinyllm.config import Config
from tinyllm.optim import get_lr, lr_factor, make_optimizer, set_lr
from tinyllm.optimizers import Lion, Muon


def sched(**kw):
    base = {"lr": 1.0, "lr_min": 0.1, "lr_warmup_steps": 10, "lr_decay_steps": 0, "max_steps": 100,
            "lr_schedule": "cosine", "lr_stable_steps": 0, "lr_decay_fraction": 0.2}
    return SimpleNamespace(**(base | kw))


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "constant"])
def test_schedule_exact_points(kind):
    cfg = sched(lr_schedule=kind, lr_stable_steps=50)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == 1.0  # the last warmup step is at the full lr
    end = 1.0 if kind == "constant" else 0.1
    assert get_lr(99, cfg) == pytest.approx(end)  # the last step is exactly at lr_min
    assert get_lr(10_000, cfg) == pytest.approx(end)
    if kind == "wsd":
        assert get_lr(59, cfg) == 1.0  # the last stable step
        assert get_lr(60, cfg) == 1.0  # decay starts from the full lr ...
        assert get_lr(61, cfg) < 1.0  # ... and goes down from there
        assert get_lr(79, cfg) == pytest.approx(0.1 + 0.9 * (1 - 19 / 39))
    if kind == "cosine":
        mid = 10 + (99 - 10) / 2
        assert get_lr(int(mid), cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    if kind == "linear":
        assert get_lr(54, cfg) == pytest.approx(0.1 + 0.9 * (1 - 44 / 89))


def test_wsd_default_stable_phase_is_80_percent():
    cfg = sched(lr_schedule="wsd")
    assert get_lr(79, cfg) == 1.0 and get_lr(81, cfg) < 1.0


def test_decay_steps_before_max_steps():
    cfg = sched(lr_decay_steps=50)
    assert get_lr(49, cfg) == pytest.approx(0.1) and get_lr(80, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "constant"])
def test_time_budgeted_schedule_follows_the_clock(kind):
    cfg = sched(lr_schedule=kind, max_steps=0, max_time=100.0)
    assert get_lr(0, cfg, elapsed=50.0) == pytest.approx(0.1)  # the warmup still counts steps
    at = {t: get_lr(1000, cfg, elapsed=t) for t in (0.0, 50.0, 79.0, 90.0, 100.0, 250.0)}
    if kind == "constant":
        assert set(at.values()) == {1.0}
        return
    assert at[0.0] == pytest.approx(1.0) and at[100.0] == pytest.approx(0.1) and at[250.0] == pytest.approx(0.1)
    expected_90 = {"cosine": 0.1 + 0.45 * (1 + math.cos(0.9 * math.pi)), "linear": 0.19, "wsd": 0.55}[kind]
    assert at[90.0] == pytest.approx(expected_90)
    assert at[79.0] == (1.0 if kind == "wsd" else pytest.approx(0.1 + 0.9 * (0.21 if kind == "linear" else
                                                                             0.5 * (1 + math.cos(0.79 * math.pi)))))


def test_wsd_decay_fraction_sizes_the_decay_in_steps_and_in_time():
    cfg = sched(lr_schedule="wsd", lr_decay_fraction=0.4)
    stable_end = int(0.6 * cfg.max_steps)
    assert lr_factor(stable_end - 1, cfg) == 1.0 and lr_factor(stable_end + 1, cfg) < 1.0
    timed = sched(lr_schedule="wsd", lr_decay_fraction=0.4, max_steps=0, max_time=100.0)
    assert lr_factor(500, timed, elapsed=59.0) == 1.0 and lr_factor(500, timed, elapsed=80.0) == pytest.approx(
        timed.lr_min / timed.lr + (1 - timed.lr_min / timed.lr) * 0.5)


def test_the_factory_builds_the_chosen_optimizer_and_set_lr_scales_every_group():
    model = tiny_model()
    cpu = torch.device("cpu")
    assert isinstance(make_optimizer(model, Config(), cpu), torch.optim.AdamW)
    assert isinstance(make_optimizer(model, Config(optimizer="lion"), cpu), Lion)
    opt = make_optimizer(model, Config(optimizer="muon", lr=1e-3, muon_lr=0.05, weight_decay=0.1), cpu)
    assert isinstance(opt, Muon)
    assert sorted((g["use_muon"], g["base_lr"]) for g in opt.param_groups) == [(False, 1e-3), (False, 1e-3),
                                                                                (True, 0.05)]
    set_lr(opt, 0.5)
    assert all(g["lr"] == 0.5 * g["base_lr"] for g in opt.param_groups)
    decay = {g["weight_decay"] for g in opt.param_groups if not g["use_muon"]}
    assert decay == {0.1, 0.0}  # norms, biases and embeddings never decay
