"""Sampling from a trained model: one function that the CLI, the GUI and the KV-cache path share.

Order of the logit processors, as in Hugging Face's generate: repetition penalty, then temperature, then
top-k, then top-p. Temperature 0 means greedy (argmax after the repetition penalty).

The context rule at the window edge: the model sees at most block_size tokens. When the context is full
and one more token must be appended, the context keeps only its last block_size // 2 tokens and goes on
from there. (A prompt longer than block_size starts from its last block_size tokens.) Dropping half the
window at once, instead of one token per step, is what lets a KV cache follow exactly the same rule: it
re-fills itself from the kept half, so cached and uncached generation pick the same tokens.

With the KV cache (`SamplingParams.kv_cache`) the prompt is run once to fill the cache, then each step runs
the model on the one new token only. At the window edge the cache is emptied and re-filled, in one pass,
from the kept half plus the new token, whose positions restart at 0 exactly as in the uncached context.
Both paths therefore compute the same logits (up to float rounding) and, greedily, pick the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch

from tinyllm.checkpoint import CKPT_NAMES, load_model_checkpoint
from tinyllm.model import GPT, ModelArgs
from tinyllm.tokenizer import tokenizer_from_json


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    # How the logits are computed, not how tokens are picked: with the cache each step runs the model on
    # one new token; the tokens are the same (tests/test_kv_cache.py).
    kv_cache: bool = False

    @classmethod
    def from_config(cls, cfg) -> SamplingParams:
        return cls(cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.kv_cache)


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams) -> torch.Tensor:
    """(B, V) logits -> (B, V) logits with every processor applied; removed tokens get -inf."""
    logits = logits.float()
    if p.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if p.temperature == 0:
        return logits
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # A token is removed when the tokens ranked above it already hold top_p of the mass, so the
        # most likely token always stays.
        remove_sorted = (torch.cumsum(probs, dim=-1) - probs) > p.top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of (B, V) logits; returns (B, 1) ids."""
    logits = process_logits(logits, seen, p)
    if p.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def slide(ctx: torch.Tensor, nxt: torch.Tensor, block_size: int) -> tuple[torch.Tensor, bool]:
    """The window rule: append nxt, first dropping the context to its last block_size // 2 tokens if it is
    full. Returns the new context and whether it was cut (the cache must then be re-filled)."""
    cut = ctx.size(1) == block_size
    if cut:
        ctx = ctx[:, block_size - block_size // 2:]
    return torch.cat([ctx, nxt], dim=1), cut


class _Recompute:
    """Logits by running the model over the whole context at every step."""

    def __init__(self, model: GPT, ctx: torch.Tensor):
        self.model, self.ctx = model, ctx

    def logits(self) -> torch.Tensor:
        return self.model(self.ctx)[0][:, -1, :]

    def append(self, nxt: torch.Tensor) -> None:
        self.ctx, _ = slide(self.ctx, nxt, self.model.args.block_size)


class _Cached:
    """Logits from the KV cache: only tokens not yet in the cache (`pending`) go through the model."""

    def __init__(self, model: GPT, ctx: torch.Tensor):
        self.model, self.ctx, self.pending = model, ctx, ctx
        self.cache = model.new_cache()

    def logits(self) -> torch.Tensor:
        return self.model(self.pending, cache=self.cache)[0][:, -1, :]

    def append(self, nxt: torch.Tensor) -> None:
        self.ctx, cut = slide(self.ctx, nxt, self.model.args.block_size)
        if cut:  # the kept half starts again at position 0, as it does for _Recompute
            self.cache.reset()
            self.pending = self.ctx
        else:
            self.pending = nxt


class PenaltyWindow:
    """The tokens the repetition penalty covers: the last `size` (= block_size) of the prompt and the text
    generated, as llama.cpp's penalty_last_n (which the GGUF export sets to block_size) counts them."""

    def __init__(self, idx: torch.Tensor, vocab_size: int, size: int):
        self.size, self.tokens = size, idx[:, -size:]
        self.counts = torch.zeros(idx.size(0), vocab_size, dtype=torch.int32, device=idx.device)
        self.counts.scatter_add_(1, self.tokens, torch.ones_like(self.tokens, dtype=torch.int32))

    def seen(self) -> torch.Tensor:
        return self.counts > 0

    def add(self, nxt: torch.Tensor) -> None:
        one = torch.ones_like(nxt, dtype=torch.int32)
        self.counts.scatter_add_(1, nxt, one)
        self.tokens = torch.cat([self.tokens, nxt], dim=1)
        if self.tokens.size(1) > self.size:  # the oldest token leaves the window
            self.counts.scatter_add_(1, self.tokens[:, :1], -one)
            self.tokens = self.tokens[:, 1:]


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, params: SamplingParams,
             generator: torch.Generator | None = None, kv_cache: bool | None = None) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new token ids one step at a time, so callers can stream text as it comes.
    `kv_cache`, when given, overrides `params.kv_cache`."""
    penalty = PenaltyWindow(idx, model.args.vocab_size, model.args.block_size) \
        if params.repetition_penalty != 1.0 else None
    cached = params.kv_cache if kv_cache is None else kv_cache
    source = (_Cached if cached else _Recompute)(model, idx[:, -model.args.block_size:])
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            nxt = sample_next(source.logits(), penalty.seen() if penalty else None, params, generator)
            if penalty:
                penalty.add(nxt)
            source.append(nxt)
            yield nxt
    finally:
        model.train(was_training)


def load_model(out_dir: str, which: str = "last", device: str | torch.device = "cpu", use_ema: bool = True):
    """Model (in eval mode), tokenizer and checkpoint dict from a run folder. The EMA weights are used
    when the checkpoint has them, unless `use_ema` is False."""
    ckpt = load_model_checkpoint(f"{out_dir}/{CKPT_NAMES[which]}", map_location=device)
    return *model_from_checkpoint(ckpt, device, use_ema), ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", use_ema: bool = True):
    """(model in eval mode, tokenizer) from a checkpoint dict already loaded by load_model_checkpoint."""
    model = GPT(ModelArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["ema"] if use_ema and "ema" in ckpt else ckpt["model"])
    model.to(device).eval()
    return model, tokenizer_from_json(ckpt["tokenizer"])


def prompt_ids(tokenizer, prompt: str, drop_unknown: bool = False) -> list[int]:
    """Encode a prompt; an empty (or fully dropped) prompt starts from a newline or the first token."""
    ids = tokenizer.encode(prompt, drop_unknown=drop_unknown) if prompt else []
    if not ids:
        ids = tokenizer.encode("\n", drop_unknown=True) or [0]
    return ids


# --- stop strings ---------------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "|": "|", "\\": "\\"}


def parse_stop(spec: str) -> list[str]:
    """--stop's value -> the stop strings: alternatives separated by |, with the escapes \\n, \\t, \\| and
    \\\\ (a backslash before any other character is kept as it is). Empty alternatives are dropped."""
    stops, cur, i = [], [], 0
    while i < len(spec):
        c = spec[i]
        if c == "\\" and i + 1 < len(spec) and spec[i + 1] in _ESCAPES:
            cur.append(_ESCAPES[spec[i + 1]])
            i += 2
            continue
        if c == "|":
            stops.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    stops.append("".join(cur))
    return [s for s in stops if s]


class StopScanner:
    """Finds the first stop string in a growing text, and how much of the text is safe to show before it."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]

    def cut(self, text: str) -> tuple[int, bool]:
        """(end, stopped). stopped: a stop string starts at text[end] (the earliest one) and generation ends.
        Otherwise text[:end] can be shown: the tail after it could still grow into a stop string, so it is
        held back until it either does or can no longer."""
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            return min(hits), True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return len(text) - hold, False


def stream_text(model: GPT, tokenizer, ids: list[int], max_new_tokens: int, params: SamplingParams,
                generator: torch.Generator | None = None, stops: list[str] | None = None
                ) -> Generator[str, None, str]:
    """Yield, once per generated token, the new text that may be shown (often "", e.g. while a BPE character
    or a possible stop string is incomplete). The pieces joined are the continuation, which ends just before
    the first stop string: generation stops there, and the stop string itself is not part of it. The
    generator's return value says why it ended: "stop" (a stop string) or "length" (max_new_tokens)."""
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    scanner = StopScanner(stops or [])
    decode = tokenizer.stream_decoder()
    # Only the text not yet shown is kept and scanned: a stop string cannot start in text already shown
    # (StopScanner holds back every tail that could begin one), so each token costs the same however long the
    # stream has grown.
    held = ""
    with contextlib.closing(generate(model, idx, max_new_tokens, params, generator)) as tokens:
        for i, tok in enumerate(tokens):
            held += decode(int(tok))
            end, stopped = scanner.cut(held)
            if i == max_new_tokens - 1 and not stopped:
                end = len(held)  # the last token: a held-back tail that never became a stop string is text
            yield held[:end]
            held = held[end:]
            if stopped:
                return "stop"
    return "length"


def generate_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int, params: SamplingParams,
                  seed: int | None = None, drop_unknown: bool = False, stops: list[str] | None = None) -> str:
    """Prompt + continuation as a string (used for samples during training)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    ids = prompt_ids(tokenizer, prompt, drop_unknown)
    return prompt + "".join(stream_text(model, tokenizer, ids, max_new_tokens, params, gen, stops))

