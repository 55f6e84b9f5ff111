"""The text-environment interface of encoder agents, and its adapter to gymnasium's vector API.

A user environment is one class with three methods; the agent sees only the strings it returns:

    reset(seed: int | None = None) -> str                       # the first state's description
    step(action: int) -> (str, float, bool, bool, dict)         # description, reward, terminated, truncated, info
    available_actions() -> list[str]                            # what `action` indexes, for the current state

`terminated` means the episode reached a terminal state (no bootstrapping from it); `truncated`
means it was cut off (a time limit) and PPO bootstraps from the value of the returned description.
`info` may carry `success` (bool, at the last step: logged as reward/success and eval/success) and
`action_mask` (bools, one per available action; absent = all available).

`GymTextEnv` turns such an object into a `gymnasium.Env` so that `SyncVectorEnv` steps several of
them; observations are the description strings and `info["actions"]` the available action strings.
"""
from __future__ import annotations

import pickle
import string
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from rltool.config import ConfigError


@runtime_checkable
class TextEnv(Protocol):
    def reset(self, seed: int | None = None) -> str: ...

    def step(self, action: int) -> tuple[str, float, bool, bool, dict]: ...

    def available_actions(self) -> list[str]: ...


MAX_DESCRIPTION = 4096
MAX_ACTIONS = 64
"""Upper bound on available actions per state (the gymnasium action space needs one)."""


class GymTextEnv(gym.Env):
    """A TextEnv as a gymnasium env: obs = description, action = index into info["actions"].

    info always holds "actions" (tuple of str) and "action_mask" (bool array, same length).
    `get_state`/`set_state` pickle the wrapped environment (its position, hand, RNG...): what a
    checkpoint needs to resume an episode exactly where it was. An empty description or action is
    refused here, naming the environment (`name`, env.name): the encoder would have nothing to read.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, text_env: TextEnv, name: str = ""):
        self.text_env, self.name = text_env, name
        self.observation_space = gym.spaces.Text(max_length=MAX_DESCRIPTION, charset=string.printable)
        self.action_space = gym.spaces.Discrete(MAX_ACTIONS)

    def _info(self, info: dict | None = None) -> dict:
        info = dict(info or {})
        actions = tuple(self._checked(a, "available_actions()", "action") for a in self.text_env.available_actions())
        info["actions"] = actions
        info["action_mask"] = np.asarray(info.get("action_mask", [True] * len(actions)), dtype=bool)
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self._checked(self.text_env.reset(seed=seed), "reset()", "description"), self._info()

    def step(self, action):
        description, reward, terminated, truncated, info = self.text_env.step(int(action))
        description = self._checked(description, "step()", "description")
        return description, float(reward), bool(terminated), bool(truncated), self._info(info)

    def _checked(self, text: str, call: str, what: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"env.name={self.name!r}: {call} returned an empty {what} {text!r}; every description "
                              "and action needs at least one word")
        return text

    def get_state(self) -> bytes:
        return pickle.dumps(self.text_env)

    def set_state(self, state: bytes) -> None:
        self.text_env = pickle.loads(state)


class GymnasiumTextEnv:
    """Base of the built-in environments: a gymnasium toy-text env whose integer state is described.

    Subclasses set ACTIONS (strings, in the gymnasium action order) and write `describe(obs)`.
    The underlying env is created with gymnasium's own time limit unless `max_episode_steps` is set.
    """

    ACTIONS: list[str] = []

    def __init__(self, env: gym.Env):
        self.env = env
        self.obs: Any = None

    def describe(self, obs) -> str:
        raise NotImplementedError

    def success(self, reward: float, terminated: bool) -> bool:
        return terminated and reward > 0

    def reset(self, seed: int | None = None) -> str:
        self.obs, _ = self.env.reset(seed=seed)
        return self.describe(self.obs)

    def step(self, action: int) -> tuple[str, float, bool, bool, dict]:
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        info = {"success": self.success(float(reward), terminated)} if terminated or truncated else {}
        return self.describe(self.obs), float(reward), terminated, truncated, info

    def available_actions(self) -> list[str]:
        return list(self.ACTIONS)


def make_gym(env_id: str, max_episode_steps: int, **kwargs) -> gym.Env:
    """gym.make without the passive checker (it would check integer observations nobody sees)."""
    extra = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    return gym.make(env_id, disable_env_checker=True, **extra, **kwargs)


def ordinal_cell(row: int, col: int) -> str:
    """0-based (row, col) -> 'row 2, column 3' (1-based, as people count)."""
    return f"row {row + 1}, column {col + 1}"
