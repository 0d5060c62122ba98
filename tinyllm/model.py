"""A GPT you can read top to bottom.

Token embedding + learned absolute positions, pre-norm transformer blocks (causal self-attention through
`F.scaled_dot_product_attention`, then an MLP), a final norm and a linear head. GPT-2 initialisation:
N(0, 0.02) everywhere, with residual output projections scaled by 1/sqrt(2 * n_layer) so the residual
stream's variance does not grow with depth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    """What it takes to build the model's tensors; stored in every checkpoint as `model_args`."""

    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float = 0.0
    bias: bool = True

    @classmethod
    def from_config(cls, cfg: Any, vocab_size: int) -> ModelArgs:
        names = [f for f in cls.__dataclass_fields__ if f != "vocab_size"]
        return cls(vocab_size=vocab_size, **{n: getattr(cfg, n) for n in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_head = a.n_head
        self.qkv = nn.Linear(a.n_embd, 3 * a.n_embd, bias=a.bias)
        self.proj = nn.Linear(a.n_embd, a.n_embd, bias=a.bias)
        self.proj.is_residual_out = True
        self.dropout = a.dropout
        self.resid_drop = nn.Dropout(a.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.fc = nn.Linear(a.n_embd, 4 * a.n_embd, bias=a.bias)
        self.proj = nn.Linear(4 * a.n_embd, a.n_embd, bias=a.bias)
        self.proj.is_residual_out = True
        self.drop = nn.Dropout(a.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


def make_norm(a: ModelArgs) -> nn.Module:
    return nn.LayerNorm(a.n_embd, bias=a.bias)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.norm1 = make_norm(a)
        self.attn = CausalSelfAttention(a)
        self.norm2 = make_norm(a)
        self.mlp = MLP(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.n_embd)
        self.pos_emb = nn.Embedding(args.block_size, args.n_embd)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.norm_f = make_norm(args)
        self.head = nn.Linear(args.n_embd, args.vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.args.n_layer) if getattr(m, "is_residual_out", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position; with targets, also the mean cross-entropy loss."""
        T = idx.shape[1]
        if self.args.block_size < T:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.args.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm_f(x))
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
