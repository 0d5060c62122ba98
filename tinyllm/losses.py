"""The training objective: cross-entropy (optionally label-smoothed) plus an optional z-loss.

The z-loss (PaLM, Chowdhery et al., 2022) is coef * mean(logsumexp(logits)^2): it pulls the softmax
normaliser towards 1, which keeps logits from drifting and helps low-precision training stay stable.
Evaluation always reports the plain cross-entropy, so validation losses compare across settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                  z_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cross-entropy, z-loss term or None); the objective is their sum."""
    flat = logits.float().reshape(-1, logits.size(-1))
    ce = F.cross_entropy(flat, targets.reshape(-1), label_smoothing=label_smoothing)
    if not z_coef:
        return ce, None
    return ce, z_coef * torch.logsumexp(flat, dim=-1).pow(2).mean()
