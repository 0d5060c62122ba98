"""What the training loop measures besides its own loss: the loss on fixed evaluation batches, and text samples.

Both draw their random numbers from generators of their own (fixed seeds), never from the global RNG, so
evaluating or sampling leaves the training run exactly as it would have been without them.
"""

from __future__ import annotations

import math

import torch

from tinyllm.batches import BatchSampler, eval_windows, window_batches
from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.generate import SamplingParams, generate_text, parse_stop
from tinyllm.model import GPT
from tinyllm.precision import Precision
from tinyllm.runlog import RunLog
from tinyllm.tokens import TokenFile, gather_windows


@torch.no_grad()
def evaluate(model: torch.nn.Module, splits: dict[str, torch.Tensor], cfg: Config, device: torch.device,
             precision: Precision, seed_offset: int = 0) -> dict[str, float]:
    """Mean loss over the same eval_iters batches every time (fixed seeds), so evals compare. With
    --eval_full, the validation split is scored whole instead (whole_split_loss) and the other splits on as
    many random windows as that took."""
    was_training = model.training
    model.eval()
    out = {}
    iters = cfg.eval_iters
    if cfg.eval_full and "val" in splits:
        out["val"], iters = whole_split_loss(model, splits["val"], cfg.block_size, cfg.batch_size, device, precision)
    for i, (name, data) in enumerate(splits.items()):
        if name in out:
            continue
        sampler = BatchSampler(data, cfg.block_size, cfg.batch_size, seed=cfg.seed + 10_000 + 100 * seed_offset + i)
        total = torch.zeros((), device=device)
        for _ in range(iters):
            x, y = sampler.next()
            with precision.autocast():
                total += model(x.to(device), y.to(device))[1].float()
        out[name] = (total / iters).item()
    model.train(was_training)
    return out


def whole_split_loss(model: torch.nn.Module, data: torch.Tensor | TokenFile, block_size: int, batch_size: int,
                     device: torch.device, precision: Precision) -> tuple[float, int]:
    """(mean loss over every token of data, batches it took): disjoint windows of block_size, so each token is
    predicted once from the tokens before it in its window, as in training. Random windows drawn with
    replacement score some stretches twice and others never, which moves the estimate with the seed."""
    batches = window_batches(eval_windows(len(data), block_size), batch_size)
    total, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in batches:
        length = batch[0][1]
        starts = torch.tensor([s for s, _, _ in batch])
        rows = gather_windows(data, starts[:, None] + torch.arange(length + 1)).to(device)  # a TokenFile too
        with precision.autocast():
            loss = model(rows[:, :-1], rows[:, 1:])[1].float()
        total += loss.double() * rows[:, 1:].numel()
        tokens += rows[:, 1:].numel()
    return (total / tokens).item(), len(batches)


def eval_row(losses: dict[str, float], bytes_per_token: float | None) -> dict[str, float]:
    """The metrics row of an evaluation: val_loss, train_eval_loss, and val_bpb (bits per UTF-8 byte of
    validation text) where the bytes per token are known."""
    row = {"val_loss": losses["val"], "train_eval_loss": losses["train"]}
    if bytes_per_token:
        row["val_bpb"] = losses["val"] / math.log(2) / bytes_per_token
    return row


def sample_text(model: GPT, tokenizer, cfg: Config, log: RunLog, seed: int) -> str:
    """A text sample for the log; a bad prompt warns instead of stopping the run."""
    params, stops = SamplingParams.from_config(cfg), parse_stop(cfg.stop)
    try:
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed, stops=stops)
    except UserError as e:
        log(f"warning: --prompt: {e}; sampling with those characters dropped")
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed,
                             drop_unknown=True, stops=stops)
