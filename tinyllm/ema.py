"""An exponential moving average of the model's weights: ema = decay * ema + (1 - decay) * weights.

Updated after every optimizer step; evaluation, samples and generation use it when enabled, since the
averaged weights usually give a lower validation loss than the last iterate.
"""

from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._ema = list(self.model.parameters())
        self._src = list(model.parameters())
        self._ema_buffers = list(self.model.buffers())
        self._src_buffers = list(model.buffers())

    @torch.no_grad()
    def update(self, finite: torch.Tensor | None = None) -> None:
        """One EMA step; `finite` (a 0-dim bool tensor on the device) makes it a no-op where the optimizer
        skipped a non-finite step on the device, without reading the flag back."""
        if finite is None:
            torch._foreach_lerp_(self._ema, self._src, 1.0 - self.decay)
        else:
            step = torch._foreach_sub(self._src, self._ema)
            torch._foreach_mul_(step, finite.float() * (1.0 - self.decay))
            torch._foreach_add_(self._ema, step)
        for e, s in zip(self._ema_buffers, self._src_buffers, strict=True):
            e.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
