"""Per-step advantage estimators for agents in environments: rewards at every step, a value baseline.

Every estimator has one signature, `fn(rewards, values, next_values, terminated, truncated, *, gamma, lam)
-> (adv, returns)`, all (T, N): T steps of N parallel environments, in time order.
  rewards[t]      reward for the action at step t
  values[t]       V(s_t)
  next_values[t]  V(s_{t+1}) of the state the action led to: the next state in the rollout, or, when the
                  episode ended at t, the final state it ended in (gymnasium's final_obs)
  terminated[t]   the episode reached a terminal state at t: no future reward, nothing to bootstrap
  truncated[t]    the episode was cut off at t (a time limit): bootstrap from next_values[t]
The outcome estimators of the GRPO family (advantages.py) have their own registry: their signature differs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rltool.registry import Registry

StepAdvantageFn = Callable[..., tuple[Tensor, Tensor]]
STEP_ADVANTAGES: Registry[StepAdvantageFn] = Registry("per-step advantage estimator", home="rltool.algos")
register_step_advantage = STEP_ADVANTAGES.register


@register_step_advantage("gae")
def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor, *,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016), all (T, N) -> adv (T, N), returns (T, N).

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   done_t = terminated_t or truncated_t
    returns = A + V (the value target). A truncated step still bootstraps from V(s_{t+1}) in delta, but
    the recursion stops there, as at a termination: step t+1 of the rollout belongs to a new episode.
    The last step's A_{t+1} is 0: next_values[-1] carries the bootstrap beyond the rollout.
    lam=1 gives Monte Carlo returns minus V; lam=0 one-step TD errors.
    """
    term, done = terminated.to(rewards.dtype), (terminated | truncated).to(rewards.dtype)  # (T, N)
    delta = rewards + gamma * (1 - term) * next_values - values  # (T, N)
    adv = torch.zeros_like(rewards)  # (T, N)
    last = torch.zeros_like(rewards[0])  # (N,): A_{t+1}
    for t in reversed(range(rewards.shape[0])):
        last = delta[t] + gamma * lam * (1 - done[t]) * last
        adv[t] = last
    return adv, adv + values
