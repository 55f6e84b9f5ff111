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

The variance is floored at `var_floor` times the features' mean square (averaged over dimensions): a
dimension that did not vary over the visited states (every dimension, in an environment with one state)
would otherwise be divided by sqrt(eps) = 1e-4, and the pooling's gradient with it (bandit_text: the
pooling's gradient norm went from 0.002 to 139, and the global grad-norm clip then shrank every head's
gradient 280-fold). With the floor a dimension is scaled up at most 1/sqrt(var_floor) ~ 32x relative to
the features' typical size; on FrozenLake's 16 states fewer than 1% of MiniLM's pooled dimensions vary
less than that.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningFeatureNorm(nn.Module):
    """x (B, D) -> (x - mean) / sqrt(max(var, floor) + eps), clipped to +-clip, where floor = var_floor x
    mean(mean^2 + var) over the D dimensions. Identity until the first update."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-8, clip: float = 10.0,
                 var_floor: float = 1e-3):
        super().__init__()
        self.momentum, self.eps, self.clip, self.var_floor = momentum, eps, clip, var_floor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if not self.updates:
            return x
        floor = self.var_floor * (self.mean.square() + self.var).mean()  # () : the features' mean square, scaled
        return ((x - self.mean) / torch.sqrt(self.var.clamp(min=floor) + self.eps)).clamp(-self.clip, self.clip)

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
