"""The baseline: a GPT and its training loop as someone would write them by hand in plain eager PyTorch, fp32.

The architecture is tinyllm's default (GPT-2: learned positions, pre-LayerNorm, GELU MLP, biases, GPT-2
initialisation), so the two train the same model and their throughputs compare. The loop is the usual one:
random windows stacked into a batch, forward, cross-entropy, backward, clip, AdamW (torch's default
implementation, weight decay on matrices only), warmup + cosine learning rate. Nothing is tuned for speed
beyond what the obvious code gets for free (F.scaled_dot_product_attention, zero_grad(set_to_none=True)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BaselineConfig:
    vocab_size: int
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    tie_weights: bool = False  # nanoGPT ties the head to the token embedding; tinyllm's default does not
    dropout: float = 0.0  # where nanoGPT has it: embeddings, attention weights, each residual branch


class Block(nn.Module):
    def __init__(self, c: BaselineConfig):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.drop = nn.Dropout(c.dropout)
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.qkv, self.attn_out = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.fc, self.mlp_out = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.attn_out(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.mlp_out(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    def __init__(self, c: BaselineConfig):
        super().__init__()
        self.tok, self.pos = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f, self.head = nn.LayerNorm(c.n_embd), nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.drop = nn.Dropout(c.dropout)
        if c.tie_weights:
            self.head.weight = self.tok.weight
        for name, p in self.named_parameters():  # GPT-2 initialisation
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("attn_out.weight", "mlp_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, gen: torch.Generator):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


class BaselineTrainer:
    """model + data + AdamW; step() trains one batch, evaluate() averages the loss over fixed batches."""

    def __init__(self, model: GPT, train_data: torch.Tensor, block_size: int, batch_size: int, lr: float = 1e-3,
                 min_lr: float = 1e-4, warmup: int = 100, decay_steps: int = 2000, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.99), grad_clip: float = 1.0, seed: int = 1337):
        self.model, self.data = model, train_data
        self.block_size, self.batch_size, self.grad_clip = block_size, batch_size, grad_clip
        self.schedule = (lr, min_lr, warmup, decay_steps)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
        self.gen = torch.Generator().manual_seed(seed)
        self.it = 0

    def step(self) -> torch.Tensor:
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(self.it, *self.schedule)
        x, y = get_batch(self.data, self.block_size, self.batch_size, self.gen)
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, data: torch.Tensor, iters: int, batch_size: int, seed: int = 0) -> float:
        self.model.eval()
        gen = torch.Generator().manual_seed(seed)
        total = sum(self.model(*get_batch(data, self.block_size, batch_size, gen)).item() for _ in range(iters))
        self.model.train()
        return total / iters
