import math

import pytest
import torch

from tinyllm.generate import PenaltyWindow, SamplingParams, generate, process_logits, sample_next
from tinyllm.model import GPT, ModelArgs


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = process_logits(logits, seen, SamplingParams(temperature=0, repetition_penalty=2.0))
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_temperature_zero_is_greedy_after_penalty():
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    seen = torch.tensor([[True, False, False]])
    p = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample_next(logits, seen, p).item() == 1  # 3/2 = 1.5 < 2.0


def test_top_k_keeps_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = process_logits(logits, None, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = process_logits(probs.log(), None, SamplingParams(temperature=1.0, top_p=0.7))
    # 0.5 alone is below 0.7, so the second token joins; after 0.8 the rest are removed.
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = process_logits(probs.log(), None, SamplingParams(temperature=1.0, top_p=0.01))
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0]])
    out = process_logits(logits, None, SamplingParams(temperature=0.5))
    assert out.tolist() == [[2.0, 4.0]]


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[math.log(0.75), math.log(0.25)]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, None, SamplingParams(temperature=1.0), g)
    assert abs(picks.float().mean().item() - 0.25) < 0.03


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return GPT(ModelArgs(vocab_size=11, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()


def test_generation_past_block_size_and_long_prompt(tiny_model):
    idx = torch.randint(0, 11, (1, 20))  # prompt longer than block_size
    out = list(generate(tiny_model, idx, 30, SamplingParams(temperature=0)))
    assert len(out) == 30 and all(t.shape == (1, 1) for t in out)


def test_window_rule_keeps_last_half(tiny_model):
    """At the window edge the context drops to its last block_size // 2 tokens, then grows again."""
    seen_lengths = []
    original = tiny_model.forward

    def spy(idx, targets=None):
        seen_lengths.append(idx.shape[1])
        return original(idx, targets)

    tiny_model.forward = spy
    list(generate(tiny_model, torch.zeros(1, 3, dtype=torch.long), 10, SamplingParams(temperature=0)))
    assert seen_lengths == [3, 4, 5, 6, 7, 8, 5, 6, 7, 8]


def test_seeded_sampling_is_reproducible(tiny_model):
    idx = torch.zeros(2, 1, dtype=torch.long)
    p = SamplingParams(temperature=1.0, top_k=5, top_p=0.9, repetition_penalty=1.3)
    a = torch.cat(list(generate(tiny_model, idx, 15, p, torch.Generator().manual_seed(1))), 1)
    b = torch.cat(list(generate(tiny_model, idx, 15, p, torch.Generator().manual_seed(1))), 1)
    c = torch.cat(list(generate(tiny_model, idx, 15, p, torch.Generator().manual_seed(2))), 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_repetition_penalty_covers_the_last_block_size_tokens(tiny_model):
    window = PenaltyWindow(torch.tensor([[1, 2, 3, 4]]), vocab_size=6, size=3)  # the prompt's last 3: 2, 3, 4
    assert window.seen().tolist() == [[False, False, True, True, True, False]]
    window.add(torch.tensor([[2]]))  # 3, 4, 2: token 2 counted twice when it was in the window
    window.add(torch.tensor([[5]]))  # 4, 2, 5: the first 2 and the 3 leave
    assert window.seen().tolist() == [[False, False, True, False, True, True]]
    # So a prompt longer than the context is penalised as its last block_size tokens, as the model sees it,
    # however long the generation goes on (here 3 context windows).
    model = tiny_model
    params = SamplingParams(temperature=0, repetition_penalty=3.0)
    long_prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3]])
    tail = long_prompt[:, -model.args.block_size:]
    for kv in (False, True):
        got = [int(t) for t in generate(model, long_prompt, 24, params, kv_cache=kv)]
        assert got == [int(t) for t in generate(model, tail, 24, params, kv_cache=kv)]
