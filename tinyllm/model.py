"""A GPT you can read top to bottom, with every architecture option as a small piece chosen once.

The default (every option off) is GPT-2: token embedding + learned absolute positions, pre-LayerNorm blocks
(causal self-attention through `F.scaled_dot_product_attention`, then a GELU MLP), a final norm and a linear
head. GPT-2 initialisation: N(0, 0.02) everywhere, with residual output projections scaled by
1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.

Each option is one local piece, picked by a small dict in a constructor, so no `forward` branches on an
option: the norm (`NORMS`), the MLP (`MLPS`), the position scheme (`POSITIONS`: learned embeddings, RoPE,
or none), the block layout (`BLOCKS`: sequential or parallel), q/k normalisation, grouped-query attention,
the sliding-window mask, the logit soft-cap, layerdrop and activation checkpointing.

The KV cache (`KVCache`) holds each layer's keys and values for up to block_size positions, allocated once.
A forward pass with a cache processes only the new tokens, at absolute positions cache.pos onwards, so
RoPE angles, learned positions and the sliding-window mask are the ones full recomputation would use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

Rotate = Callable[[torch.Tensor], torch.Tensor]
KVWrite = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ModelArgs:
    """What it takes to build the model; stored in every checkpoint as `model_args`.

    Every field added after the first release has a default that means "as before", so a checkpoint
    written without it loads as the baseline architecture it was trained with.
    """

    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float = 0.0
    attention_dropout: bool = True  # dropout on the attention weights too (False: only embeddings, residual branches)
    bias: bool = True
    weight_tying: bool = False
    mlp: str = "gelu"
    mlp_hidden: int = 0  # 0 = auto: 4 * n_embd, or for swiglu 8/3 * n_embd rounded up to a multiple of 64
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    qk_norm: bool = False
    parallel_block: bool = False
    sliding_window: int = 0  # 0 = off (full causal attention)
    n_kv_head: int = 0  # 0 = n_head (plain multi-head attention)
    logit_softcap: float = 0.0  # 0 = off
    layerdrop: float = 0.0
    grad_checkpointing: bool = False
    norm_eps: float = 1e-5  # added to the variance in every norm layer but q/k norm (GPT-2 and Llama 2 use 1e-5)

    @classmethod
    def from_config(cls, cfg: Any, vocab_size: int) -> ModelArgs:
        names = [f.name for f in fields(cls) if f.name != "vocab_size"]
        return cls(vocab_size=vocab_size, **{n: getattr(cfg, n) for n in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def window(self) -> int:
        """How many positions (itself included) each query sees: block_size when the window is off."""
        return self.sliding_window if 0 < self.sliding_window < self.block_size else self.block_size

    def check(self) -> None:
        """Constraints between fields (the config reports them as flag errors before we get here)."""
        problems = {
            "n_embd must be divisible by n_head": self.n_embd % self.n_head,
            "n_head must be divisible by n_kv_head": self.n_head % self.kv_heads,
            "rope needs an even head size (n_embd / n_head)": self.pos_encoding == "rope" and self.head_dim % 2,
            f"unknown mlp '{self.mlp}'": self.mlp not in MLPS,
            f"unknown norm '{self.norm}'": self.norm not in NORMS,
            f"unknown pos_encoding '{self.pos_encoding}'": self.pos_encoding not in POSITIONS,
            "sliding_window must be >= 0 (0 = off)": self.sliding_window < 0,
            "norm_eps must be > 0": not self.norm_eps > 0,
            "layerdrop must be in [0, 1)": not 0.0 <= self.layerdrop < 1.0,
        }
        bad = [msg for msg, failed in problems.items() if failed]
        if bad:
            raise ValueError("; ".join(bad))


# --- norms ----------------------------------------------------------------------------------------------

class _RMSNormFn(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * w over the last dim, saving the normalised x and the per-row scale.
    torch's rms_norm has no fused CPU kernel: autograd walks its composite (pow, mean, add, rsqrt, two
    muls) backward one op at a time, and on a CPU at block 256 x batch 8 this closed form is ~4% of the
    whole training step faster."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        xhat, rstd, weight = ctx.saved_tensors
        grad_w = (grad * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        g = grad * weight
        # d/dx of x * rstd: rstd * (g - xhat * mean(g * xhat)), the mean over the normalised dim.
        return g.sub_(xhat * (g * xhat).mean(-1, keepdim=True)).mul_(rstd), grad_w, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm in its input's dtype. Under autocast q and k arrive in bf16 while the gain stays fp32, and
    torch's fused kernel needs the two to match (otherwise a slower path and a warning at every run).
    Training in fp32 on a CPU goes through _RMSNormFn instead (same values, a faster backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and x.device.type == "cpu" and x.requires_grad and self.eps is not None:
            return _RMSNormFn.apply(x, self.weight, self.eps)
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


# q/k norm's eps is fixed, not --norm_eps; the exporters and the importer map it (targets whose q/k norms take
# the eps of the others need --norm_eps to equal it).
QK_NORM_EPS = 1e-5

NORMS: dict[str, Callable[..., nn.Module]] = {  # (dim, bias, eps=1e-5) -> the norm layer
    "layernorm": lambda dim, bias, eps=1e-5: nn.LayerNorm(dim, eps=eps, bias=bias),
    "rmsnorm": lambda dim, bias, eps=1e-5: RMSNorm(dim, eps=eps),  # has no bias by definition
}


def make_norm(a: ModelArgs) -> nn.Module:
    return NORMS[a.norm](a.n_embd, a.bias, a.norm_eps)


# --- MLPs -----------------------------------------------------------------------------------------------

def mlp_hidden_size(a: ModelArgs) -> int:
    """--mlp_hidden if given; else 4 * n_embd, or for SwiGLU 8/3 * n_embd rounded up to a multiple of 64
    (its three matrices then hold about as many weights as the two of a 4x MLP)."""
    if a.mlp_hidden:
        return a.mlp_hidden
    if a.mlp == "swiglu":
        return 64 * -(-8 * a.n_embd // (3 * 64))
    return 4 * a.n_embd


class MLP(nn.Module):
    """fc -> activation -> proj. Subclasses differ only in the activation (and how wide fc is)."""

    fc_outputs_per_hidden = 1

    def __init__(self, a: ModelArgs):
        super().__init__()
        hidden = mlp_hidden_size(a)
        self.fc = nn.Linear(a.n_embd, self.fc_outputs_per_hidden * hidden, bias=a.bias)
        self.proj = nn.Linear(hidden, a.n_embd, bias=a.bias)
        self.proj.is_residual_out = True
        self.drop = nn.Dropout(a.dropout)

    def act(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class GeluMLP(MLP):
    def act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h)


class GeluTanhMLP(MLP):
    """GELU in its tanh approximation, GPT-2's own activation (Hugging Face's `gelu_new`)."""

    def act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h, approximate="tanh")


class _ReLU2(torch.autograd.Function):
    """relu(h)^2 with a backward of one saved tensor and two passes. Autograd's own chain (relu, then square)
    saves both h and relu(h) and runs four full-size passes backward; at block 256 x batch 8 on a CPU those
    passes over the 4x-wide hidden layer were a fifth of the step."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (r + r).mul_(grad)  # d/dh relu(h)^2 = 2 relu(h)


class ReLU2MLP(MLP):
    """Squared ReLU (So et al., 2021, "Primer")."""

    def act(self, h: torch.Tensor) -> torch.Tensor:
        return _ReLU2.apply(h)


class SwiGLUMLP(MLP):
    """silu(gate) * up (Shazeer, 2020); gate and up come from one fused matrix."""

    fc_outputs_per_hidden = 2

    def act(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up


MLPS: dict[str, type[MLP]] = {"gelu": GeluMLP, "gelu_tanh": GeluTanhMLP, "swiglu": SwiGLUMLP, "relu2": ReLU2MLP}


# --- positions ------------------------------------------------------------------------------------------
# A position module does two things: `embed` adds what it has to the token embeddings, and `rotary`
# returns the function applied to q and k in every attention layer. Each is the identity where unused.
# The GPT keeps it under the name `pos_emb`, so old checkpoints' `pos_emb.weight` still loads.

def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class LearnedPositions(nn.Embedding):
    def __init__(self, a: ModelArgs):
        super().__init__(a.block_size, a.n_embd)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x + self(torch.arange(start, start + x.shape[1], device=x.device))

    def rotary(self, start: int, length: int) -> Rotate:
        return _same


class NoPositions(nn.Module):
    """No position signal at all: causal attention alone tells the tokens apart (Haviv et al., 2022)."""

    def __init__(self, a: ModelArgs):
        super().__init__()

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x

    def rotary(self, start: int, length: int) -> Rotate:
        return _same


class RotaryPositions(nn.Module):
    """RoPE (Su et al., 2021) in the split-halves layout: dimension i pairs with i + head_dim/2, and the
    pair at position p turns by p * theta^(-2i/head_dim). The angle table covers block_size positions and
    is sliced at the cache offset, so cached steps turn q and k exactly as full recomputation does."""

    def __init__(self, a: ModelArgs):
        super().__init__()
        d = a.head_dim
        inv_freq = a.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.arange(a.block_size, dtype=torch.float64)[:, None] * inv_freq[None, :]
        # Not persistent: derived from model_args, so the state dict (and old checkpoints) stay as they are.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x

    def rotary(self, start: int, length: int) -> Rotate:
        cos, sin = self.cos[start:start + length], self.sin[start:start + length]

        def rotate(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)
            c, s = cos.to(x.dtype), sin.to(x.dtype)
            return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)

        return rotate


POSITIONS: dict[str, type[nn.Module]] = {"learned": LearnedPositions, "rope": RotaryPositions,
                                         "none": NoPositions}


# --- attention ------------------------------------------------------------------------------------------

def attention_mask(start: int, length: int, window: int, device: torch.device | str | None = None
                   ) -> torch.Tensor | None:
    """(length, start + length) booleans: query i (at position start + i) sees key j iff
    max(0, start + i - window + 1) <= j <= start + i. None where that is plain causal attention over a
    square (start 0 and a window at least as long as the input), which lets SDPA use its causal kernel."""
    if start == 0 and window >= length:
        return None
    q = torch.arange(start, start + length, device=device)[:, None]
    k = torch.arange(start + length, device=device)[None, :]
    return (k <= q) & (k > q - window)


def _no_cache(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = a.n_head, a.kv_heads, a.head_dim
        kv_dim = self.n_kv_head * self.head_dim
        self.split_sizes = [a.n_embd, kv_dim, kv_dim]
        self.qkv = nn.Linear(a.n_embd, a.n_embd + 2 * kv_dim, bias=a.bias)
        self.proj = nn.Linear(a.n_embd, a.n_embd, bias=a.bias)
        self.proj.is_residual_out = True
        # q/k norm: RMS over each head's vector, with a learned gain (OLMo 2, Qwen 3 style).
        self.q_norm = RMSNorm(a.head_dim, eps=QK_NORM_EPS) if a.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(a.head_dim, eps=QK_NORM_EPS) if a.qk_norm else nn.Identity()
        groups = self.n_head // self.n_kv_head
        self.expand_kv = partial(torch.repeat_interleave, repeats=groups, dim=1) if groups > 1 else _same
        # Dropout on the attention weights takes SDPA off its fused kernel on a CPU (~1.7x the step time on
        # AVX2); with attention_dropout off, --dropout acts on the embeddings and residual branches only.
        self.dropout = a.dropout if a.attention_dropout else 0.0
        self.resid_drop = nn.Dropout(a.dropout)

    def forward(self, x: torch.Tensor, rotate: Rotate, mask: torch.Tensor | None, kv: KVWrite) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = rotate(self.q_norm(q)), rotate(self.k_norm(k))
        k, v = kv(k, v)
        y = F.scaled_dot_product_attention(q, self.expand_kv(k), self.expand_kv(v), attn_mask=mask,
                                           is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


# --- blocks ---------------------------------------------------------------------------------------------
# `scale` multiplies the residual branches: 1 normally, 1 / (1 - layerdrop) for kept blocks when
# training with layerdrop. torch.add(x, y, alpha=1.0) is bit-identical to x + y.

class Block(nn.Module):
    """Pre-norm, one after the other: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.norm1 = make_norm(a)
        self.attn = CausalSelfAttention(a)
        self.norm2 = make_norm(a)
        self.mlp = MLPS[a.mlp](a)

    def forward(self, x: torch.Tensor, rotate: Rotate, mask: torch.Tensor | None, kv: KVWrite,
                scale: float = 1.0) -> torch.Tensor:
        x = torch.add(x, self.attn(self.norm1(x), rotate, mask, kv), alpha=scale)
        return torch.add(x, self.mlp(self.norm2(x)), alpha=scale)


class ParallelBlock(nn.Module):
    """x + attn(norm(x)) + mlp(norm(x)) with one shared norm (GPT-J, PaLM)."""

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.norm1 = make_norm(a)
        self.attn = CausalSelfAttention(a)
        self.mlp = MLPS[a.mlp](a)

    def forward(self, x: torch.Tensor, rotate: Rotate, mask: torch.Tensor | None, kv: KVWrite,
                scale: float = 1.0) -> torch.Tensor:
        h = self.norm1(x)
        return torch.add(x, self.attn(h, rotate, mask, kv) + self.mlp(h), alpha=scale)


BLOCKS: dict[bool, type[nn.Module]] = {False: Block, True: ParallelBlock}


def _call_block(block: nn.Module, *args: Any) -> torch.Tensor:
    return block(*args)


def _call_block_checkpointed(block: nn.Module, *args: Any) -> torch.Tensor:
    """Keep only the block's input; recompute its activations during backward. The RNG state is saved and
    restored around the recomputation, so dropout draws the same masks and the gradients are unchanged."""
    if not torch.is_grad_enabled():
        return block(*args)
    return checkpoint(block, *args, use_reentrant=False)


class SoftCap(nn.Module):
    """cap * tanh(logits / cap): logits stay within (-cap, cap) (Gemma 2)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(x / self.cap)


# --- layerdrop ------------------------------------------------------------------------------------------

def layerdrop_scales(p: float, n_layer: int, seed: int, step: int) -> list[float] | None:
    """Which blocks a training step runs: 0.0 = skipped, 1 / (1 - p) = kept (its residual branches scaled up
    so their expected contribution equals the evaluation model's, where every block runs unscaled).

    A pure function of (seed, step) with a generator of its own: every DDP rank draws the same blocks, a
    resumed run draws what the uninterrupted run drew, and the global RNG (dropout's) is not touched."""
    if p == 0:
        return None
    g = torch.Generator().manual_seed(((seed & 0xFFFFFFFF) << 32) | (step & 0xFFFFFFFF))
    keep = (torch.rand(n_layer, generator=g) >= p).tolist()
    return [1.0 / (1.0 - p) if k else 0.0 for k in keep]


# --- the cache ------------------------------------------------------------------------------------------

class KVCache:
    """Each layer's keys and values for up to `max_len` positions, filled in place.

    The buffers are allocated once, at the first write, in the dtype and on the device of the keys (so an
    autocast forward gets a bf16 cache); after that nothing grows or moves. `pos` is how many positions are
    filled; `GPT.forward(idx, cache=...)` writes the new tokens' keys at `pos` and then advances it.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.pos = 0
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated)."""
        self.pos = 0

    def writer(self, layer: int) -> KVWrite:
        return partial(self._write, layer)

    def _write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, H, self.max_len, D)
            self.v[layer] = v.new_empty(B, H, self.max_len, D)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# --- the model ------------------------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        args.check()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.n_embd)
        self.pos_emb = POSITIONS[args.pos_encoding](args)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(BLOCKS[args.parallel_block](args) for _ in range(args.n_layer))
        self.norm_f = make_norm(args)
        self.head = nn.Linear(args.n_embd, args.vocab_size, bias=False)
        self.softcap = SoftCap(args.logit_softcap) if args.logit_softcap > 0 else nn.Identity()
        if args.weight_tying:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        self._run_block = _call_block_checkpointed if args.grad_checkpointing else _call_block
        self._unit_scales = [1.0] * args.n_layer
        self._layer_scales: list[float] | None = None

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.args.n_layer) if getattr(m, "is_residual_out", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters counted once each (a tied head shares the embedding's)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        return KVCache(self.args.n_layer, self.args.block_size)

    def set_layerdrop_step(self, seed: int, step: int) -> None:
        """Called by the training loop before each optimizer step: fixes the blocks that step skips (the same
        for all of its micro-batches). Has no effect with layerdrop 0, in eval mode, or in generation."""
        self._layer_scales = layerdrop_scales(self.args.layerdrop, self.args.n_layer, seed, step)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx; with targets, also the mean cross-entropy loss.

        With a cache, idx holds only the new tokens: they sit at positions cache.pos onwards and see the
        cached keys; their keys are added to the cache."""
        T = idx.shape[1]
        start = cache.pos if cache is not None else 0
        if start + T > self.args.block_size:
            raise ValueError(f"{start} cached + {T} new tokens is longer than block_size {self.args.block_size}")
        x = self.drop(self.pos_emb.embed(self.tok_emb(idx), start))
        rotate = self.pos_emb.rotary(start, T)
        mask = attention_mask(start, T, self.args.window, idx.device)
        writers = [cache.writer(i) for i in range(len(self.blocks))] if cache is not None \
            else [_no_cache] * len(self.blocks)
        scales = self._layer_scales if self.training and self._layer_scales is not None else self._unit_scales
        for block, kv, scale in zip(self.blocks, writers, scales, strict=True):
            if scale:  # 0.0: layerdrop skips this block for this step
                x = self._run_block(block, x, rotate, mask, kv, scale)
        if cache is not None:
            cache.pos += T
        logits = self.softcap(self.head(self.norm_f(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only the matrices of linear layers: norms, biases and embeddings are left alone."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
