"""Value-function losses for actor-critic updates (PPO's critic), one signature:

    fn(value, old_value, returns, p: ValueLossParams) -> (loss (B,), detached metrics)

value is V(s) now, old_value V(s) when the rollout was collected, returns the GAE targets; all (B,).
Callers take the mean and weight it (algo.ppo.vf_coef). The 1/2 makes the gradient (V - R).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rltool.registry import Registry


@dataclass(frozen=True)
class ValueLossParams:
    clip: float = 0.2
    """clipped: how far V may move from old_value before the loss stops pulling it further."""


ValueLossFn = Callable[[Tensor, Tensor, Tensor, ValueLossParams], tuple[Tensor, dict[str, Tensor]]]
VALUE_LOSSES: Registry[ValueLossFn] = Registry("value loss", home="rltool.algos")
register_value_loss = VALUE_LOSSES.register


def _check_shapes(value: Tensor, old_value: Tensor, returns: Tensor) -> None:
    # a (B, 1) value against (B,) returns would broadcast to (B, B) and train on every pair
    if not (value.shape == old_value.shape == returns.shape and value.dim() == 1):
        raise ValueError(f"value {tuple(value.shape)}, old_value {tuple(old_value.shape)}, returns "
                         f"{tuple(returns.shape)}: all must be (B,)")


@register_value_loss("mse")
def mse_value_loss(value: Tensor, old_value: Tensor, returns: Tensor, p: ValueLossParams) -> tuple[Tensor, dict]:
    """1/2 (V - R)^2, per sample. old_value is unused."""
    _check_shapes(value, old_value, returns)
    return 0.5 * (value - returns) ** 2, {}


@register_value_loss("clipped")
def clipped_value_loss(value: Tensor, old_value: Tensor, returns: Tensor, p: ValueLossParams) -> tuple[Tensor, dict]:
    """1/2 max((V - R)^2, (V_clip - R)^2), V_clip = old_value + clip(V - old_value, -eps, eps), per sample.

    PPO2's value clipping (cleanrl ppo.py, clip_vloss): the clip is on V's move away from the rollout's
    old value, not on V - R. The max keeps the pessimistic term, so V gets no gradient once it has moved
    past eps in the direction that reduces the error. eps is in return units: with returns in the hundreds
    (unnormalised rewards) V can follow only about eps a rollout, so mse is the default (as SB3, which has
    no value clip); clipped suits algo.ppo.norm_reward=true, where returns are near 1.
    """
    _check_shapes(value, old_value, returns)
    v_clipped = old_value + torch.clamp(value - old_value, -p.clip, p.clip)  # (B,)
    unclipped, clipped = (value - returns) ** 2, (v_clipped - returns) ** 2  # (B,)
    loss = 0.5 * torch.maximum(unclipped, clipped)
    return loss, {"value/clipfrac": (clipped > unclipped).float().mean().detach()}
