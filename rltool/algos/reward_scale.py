"""Reward scaling for per-step rewards: divide by the running standard deviation of the discounted return.

Returns of -100s (CliffWalking's cliff) make the critic's squared error hundreds of times larger than the
few units that separate neighbouring states, so advantages are mostly critic noise. Scaling rewards so
the discounted return has unit spread (SB3's VecNormalize(norm_reward=True), gymnasium's NormalizeReward,
cleanrl's continuous-control PPO) keeps values and advantages near 1 whatever the environment's units.
The mean is not subtracted: the sign of a reward is kept. Episode returns are logged unscaled.

State (the running moments and each environment's discounted return) goes into the checkpoint, so a
resumed run scales the same rewards the same way.
"""
from __future__ import annotations

import numpy as np
from gymnasium.wrappers.utils import RunningMeanStd


class ReturnScaler:
    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8, clip: float = 10.0):
        self.gamma, self.eps, self.clip = gamma, eps, clip
        self.ret = np.zeros(num_envs)  # discounted return of each environment's running episode
        self.moments = RunningMeanStd()  # of self.ret over all steps seen (gymnasium's, as its NormalizeReward)

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """reward, done (N,) of one vector step -> scaled reward (N,). done resets the return after this step."""
        self.ret = self.ret * self.gamma + reward
        self.moments.update(self.ret)
        scaled = np.clip(reward / np.sqrt(self.moments.var + self.eps), -self.clip, self.clip)
        self.ret[done] = 0.0
        return scaled

    def state_dict(self) -> dict:
        m = self.moments
        return {"ret": self.ret.copy(), "mean": float(m.mean), "var": float(m.var), "count": float(m.count)}

    def load_state_dict(self, state: dict) -> None:
        self.ret = state["ret"].copy()
        self.moments.mean, self.moments.var, self.moments.count = state["mean"], state["var"], state["count"]
