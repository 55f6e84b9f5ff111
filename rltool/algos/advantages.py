"""Outcome advantage estimators: one scalar reward per sample -> one advantage per sample.

Every estimator has the same signature, `fn(rewards, group, valid, *, eps) -> adv`:
  rewards (N,) float, group (N,) long prompt ids (any values), valid (N,) bool.
A sample with valid=False could not be scored (its reward may be 0 or nan): it is left out of
every statistic and its advantage is exactly 0, so it neither pushes nor shifts the baseline.
A group whose valid rewards are all equal carries no signal and gets exactly 0 (not ~1e-9 from
float round-off in the mean), which is also what DAPO's dynamic sampling filters on.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from rltool.registry import Registry

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", home="rltool.algos")
register_advantage = ADVANTAGES.register


class GroupStats(NamedTuple):
    """Per-group statistics over valid members, gathered back to each sample; all (N,)."""

    gid: Tensor  # long, the sample's group renumbered to 0..G-1
    r: Tensor  # rewards with invalid entries set to 0 (nan-safe)
    count: Tensor  # number of valid members in the sample's group
    total: Tensor  # sum of valid rewards in the group
    mean: Tensor  # total / count (0 for a group with no valid member)
    var: Tensor  # unbiased variance of the valid rewards (0 for fewer than 2)
    informative: Tensor  # bool: the group's valid rewards are not all equal


def group_stats(rewards: Tensor, group: Tensor, valid: Tensor) -> GroupStats:
    """rewards (N,), group (N,), valid (N,) -> GroupStats; shared by the estimators and DAPO."""
    # torch.unique has a data-dependent output size: a device sync, once per step, and it lets
    # group ids be arbitrary (prompt indices, hashes) instead of 0..G-1.
    ids, gid = torch.unique(group, return_inverse=True)  # (G,), (N,)
    G = ids.numel()
    w = valid.to(rewards.dtype)  # (N,)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))  # (N,); where, not r*w: nan*0 = nan
    count = torch.zeros(G, dtype=rewards.dtype, device=rewards.device).index_add_(0, gid, w)  # (G,)
    total = torch.zeros_like(count).index_add_(0, gid, r)  # (G,)
    inf = torch.full_like(count, float("inf"))  # (G,)
    lo = inf.scatter_reduce(0, gid, r.masked_fill(~valid, float("inf")), "amin")  # (G,)
    hi = (-inf).scatter_reduce(0, gid, r.masked_fill(~valid, float("-inf")), "amax")  # (G,)
    mean = total / count.clamp(min=1)  # (G,)
    sq = torch.where(valid, (r - mean[gid]) ** 2, torch.zeros_like(r))  # (N,)
    var = torch.zeros_like(count).index_add_(0, gid, sq) / (count - 1).clamp(min=1)  # (G,)
    return GroupStats(gid, r, count[gid], total[gid], mean[gid], var[gid], (hi > lo)[gid])


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """(r - mean_g) / (std_g + eps), std unbiased (Bessel, as torch.std in TRL and verl).

    Shao et al. 2024 (DeepSeekMath). A group with < 2 valid members, or zero variance, gives 0.
    Liu et al. 2025 argue the std division over-weights near-solved prompts; see "dr_grpo".
    """
    s = group_stats(rewards, group, valid)
    adv = (s.r - s.mean) / (s.var.sqrt() + eps)  # (N,)
    return torch.where(s.informative & valid, adv, torch.zeros_like(adv))


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: Tensor, group: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """r - mean_g, no std scaling (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    Pair with agg mode "dr_grpo" (constant normaliser) to remove both of GRPO's biases. eps unused.
    """
    s = group_stats(rewards, group, valid)
    return torch.where(s.informative & valid, s.r - s.mean, torch.zeros_like(s.r))


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, group: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """r - mean of the other valid members of the group (Ahmadian et al. 2024, RLOO).

    Equals n/(n-1) * (r - mean_g) for a group with n valid members; n < 2 gives 0. eps unused.
    """
    s = group_stats(rewards, group, valid)
    others_mean = (s.total - s.r) / (s.count - 1).clamp(min=1)  # (N,)
    return torch.where(s.informative & valid, s.r - others_mean, torch.zeros_like(s.r))


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(rewards: Tensor, group: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline (Hu et al. 2025): a = r - mean_g, then whitened over the valid batch.

    Whitening is (a - mean) / (std + eps), unbiased std over valid *samples*. Departures from
    verl: verl whitens over tokens (longer answers weigh more) and gives a singleton group mean 0
    (so a = r) where we give a = 0. Each group's a sums to 0, so the batch mean is 0 up to
    round-off and zero-variance groups stay at exactly 0, as in the group-relative estimators.
    """
    s = group_stats(rewards, group, valid)
    keep = s.informative & valid  # (N,)
    a = torch.where(keep, s.r - s.mean, torch.zeros_like(s.r))  # (N,)
    n = valid.sum().to(rewards.dtype)
    mean = a.sum() / n.clamp(min=1)
    var = (torch.where(valid, a - mean, torch.zeros_like(a)) ** 2).sum() / (n - 1).clamp(min=1)
    adv = (a - mean) / (var.sqrt() + eps)  # (N,)
    return torch.where(keep, adv, torch.zeros_like(adv))


def grpo_advantage_reference(rewards: Tensor, group: Tensor, valid: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Slow, obviously-correct loop version of "grpo"; tests check that the two agree."""
    adv = torch.zeros_like(rewards)  # (N,)
    for g in group.unique().tolist():
        idx = ((group == g) & valid).nonzero().flatten()
        r = rewards[idx]
        if len(idx) < 2 or bool((r == r[0]).all()):
            continue
        adv[idx] = (r - r.mean()) / (r.std() + eps)
    return adv
