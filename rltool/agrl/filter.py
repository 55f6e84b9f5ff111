"""Trajectory filter: train only on episodes that beat what the policy usually achieves.

Running statistics are Welford's (exact mean and unbiased variance over every episode reward seen,
one float64 pass per batch). A batch is judged against the past: `TrajectoryFilter.step` decides
with the statistics of earlier batches and only then adds the batch, all of it, kept or not (the
kept episodes alone would ratchet the threshold upwards). Before `warmup` episodes have been seen
every episode passes, whichever the mode; a batch that crosses `warmup` is judged as a whole by
the count before it.
  mode "std":        keep reward > mean + k * std        (strictly greater)
  mode "percentile": keep the ceil(top_percent/100 * E) highest rewards of this batch (at least
                     one; ties go to the earlier episode), history unused apart from warmup.
  mode "none":       keep every episode (the running statistics are still kept: a baseline).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RunningStats:
    """Welford's online mean and variance."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the running mean

    def update(self, values: Tensor) -> None:
        for x in values.detach().double().flatten().tolist():  # one device sync per batch
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        """Unbiased (n - 1) standard deviation; 0 for fewer than two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


def keep_above(rewards: Tensor, mean: float, std: float, k: float) -> Tensor:
    """rewards (E,) -> keep (E,) bool: reward > mean + k * std."""
    return rewards > mean + k * std


def keep_top_percent(rewards: Tensor, top_percent: float) -> Tensor:
    """rewards (E,) -> keep (E,) bool: the ceil(top_percent/100 * E) highest, at least one."""
    E = rewards.shape[0]
    n = max(1, math.ceil(top_percent / 100 * E)) if E else 0
    order = torch.argsort(rewards, descending=True, stable=True)  # (E,); stable: ties by index
    keep = torch.zeros(E, dtype=torch.bool, device=rewards.device)  # (E,)
    keep[order[:n]] = True
    return keep


@dataclass
class TrajectoryFilter:
    mode: str = "std"
    """"std" (running mean + k * std), "percentile" (top of the current batch) or "none"."""
    k: float = 1.0
    """Standard deviations above the running mean, mode "std"."""
    top_percent: float = 25.0
    """Share of the batch kept, in percent, mode "percentile"."""
    warmup: int = 0
    """Episodes seen before any is filtered out."""
    stats: RunningStats = field(default_factory=RunningStats)

    def __post_init__(self):
        if self.mode not in ("std", "percentile", "none"):
            raise ValueError(f"filter mode '{self.mode}'; valid: none, percentile, std")
        if not 0 < self.top_percent <= 100:
            raise ValueError(f"top_percent={self.top_percent}; must be in (0, 100]")

    def step(self, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """rewards (E,) -> keep (E,) bool and metrics; judged by past batches, then recorded."""
        if self.stats.count < self.warmup or self.mode == "none":
            keep = torch.ones_like(rewards, dtype=torch.bool)
        elif self.mode == "std":
            keep = keep_above(rewards, self.stats.mean, self.stats.std, self.k)
        else:
            keep = keep_top_percent(rewards, self.top_percent)
        metrics = {
            "filter/kept_frac": keep.float().mean().detach(),
            "filter/running_mean": torch.tensor(self.stats.mean),
            "filter/running_std": torch.tensor(self.stats.std),
        }
        self.stats.update(rewards)
        return keep, metrics
