"""DAPO extras (Yu et al. 2025) that are not a loss or an advantage: the soft overlong penalty
added to rewards, and the group filter used by dynamic sampling."""
from __future__ import annotations

import torch
from torch import Tensor

from rltool.algos.advantages import group_stats


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float) -> Tensor:
    """lengths (N,) long -> (N,) reward shaping term, DAPO's "soft overlong punishment".

    0 up to max_len - buffer, then falls linearly to -penalty at max_len and stays there.
    buffer=0 turns it off (all zeros): a hard cut-off is better expressed as an invalid sample.
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)  # (N,)
    over = (lengths - (max_len - buffer)).clamp(min=0).float()  # (N,) tokens into the buffer
    return (-penalty * over / buffer).clamp(min=-penalty)


def informative_groups(rewards: Tensor, group: Tensor, valid: Tensor) -> Tensor:
    """rewards (N,), group (N,), valid (N,) -> (N,) bool, True for every member (valid or not)
    of a group whose valid rewards are not all equal; dynamic sampling keeps those groups.
    A group with fewer than two valid members is uninformative."""
    return group_stats(rewards, group, valid).informative
