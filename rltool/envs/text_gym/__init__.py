"""Text environments for encoder agents (algo=encoder_ppo): every state and action is a string.

One file per environment, registered by name: TEXT_ENVS imports this package's modules on its first
lookup (rltool/registry.py), so a new environment is one file here (plus its YAML in conf/env/). The built-in ones wrap gymnasium's toy-text envs and
describe each state in words (their templates are in each file's docstring); bandit_text is written
against the bare `TextEnv` interface (text_env.py), the way a user environment is.
"""
from __future__ import annotations

from typing import Callable

from dataclasses import dataclass

from rltool.config import ConfigError, EnvConfig, check
from rltool.registry import Registry



@dataclass
class TextEnvConfig(EnvConfig):
    """The keys of every text environment (a text environment with more registers a subclass)."""

    max_episode_steps: int = 0
    """Time limit: an episode past it is truncated (0: gymnasium's own, none for cliffwalking)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_episode_steps >= 0, "env.max_episode_steps", self.max_episode_steps, "must be >= 0")


TEXT_ENVS: Registry[Callable[[TextEnvConfig], object]] = Registry("text environment", home="rltool.envs.text_gym",
                                                                  config=TextEnvConfig)
register_text_env = TEXT_ENVS.register


def validate_text_env_config(cfg: EnvConfig) -> None:
    """ConfigError if env.name is not a registered text environment (builds nothing)."""
    if cfg.name not in TEXT_ENVS:
        raise ConfigError(f"env.name={cfg.name!r}: unknown text environment; valid: {', '.join(TEXT_ENVS.names())}")


def make_vector_env(cfg: EnvConfig, num_envs: int, max_episode_steps: int = 0):
    """`num_envs` copies in gymnasium's SyncVectorEnv; an episode that ends is reset in the same step
    (SAME_STEP autoreset), its last description in info["final_obs"]. The caller's first
    `envs.reset(seed=s)` seeds copy i with s + i; later resets continue each copy's RNG.
    max_episode_steps > 0 truncates every episode there too, whatever the environment's own limit
    (evaluation: a greedy policy can loop forever where the environment has none)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.wrappers import TimeLimit

    from rltool.envs.text_gym.text_env import GymTextEnv

    def make():
        env = GymTextEnv(TEXT_ENVS[cfg.name](cfg), cfg.name)
        return TimeLimit(env, max_episode_steps) if max_episode_steps else env

    validate_text_env_config(cfg)
    return SyncVectorEnv([make for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
