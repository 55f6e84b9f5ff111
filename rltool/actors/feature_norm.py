"""Standardisation of an encoder agent's pooled state features across states.

A text game's descriptions share most of their words ("You are on a frozen lake of 4 by 4 tiles, at row
2, column 3 ..."), so their pooled MiniLM vectors differ by a few percent (cosine 0.96-0.999 between
FrozenLake's 16 states): the heads' inputs are dominated by what every state has in common. Subtracting
the mean over visited states and dividing by the per-dimension spread leaves what tells states apart,
as observation normalisation (SB3's VecNormalize, cleanrl's NormalizeObservation) does for vector states.

Statistics are buffers (saved with the agent) and change only through `update`, which the PPO loop calls
after a rollout's update phase: a rollout's actions, log-probs and values, and the update that reuses them,
all see one fixed function. An exponential moving average follows the pooled features as the learned
pooling moves them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningFeatureNorm(nn.Module):
    """x (B, D) -> (x - mean) / sqrt(var + eps), clipped to +-clip. Identity until the first update."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-8, clip: float = 10.0):
        super().__init__()
        self.momentum, self.eps, self.clip = momentum, eps, clip
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if not self.updates:
            return x
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """x (B, D): features of the states just visited (repeats count: frequent states weigh more)."""
        mean, var = x.mean(0), x.var(0, unbiased=False)
        if not self.updates:
            self.mean.copy_(mean)
            self.var.copy_(var)
        else:
            self.mean.lerp_(mean, self.momentum)
            self.var.lerp_(var, self.momentum)
        self.updates += 1
