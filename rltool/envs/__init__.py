"""Environments: where prompts come from. One file per environment, registered by name.

Envs only provide examples and chat messages; scoring belongs to the reward group's Scorer, so
the same env can be trained with different rewards by changing YAML alone.
`env.name=gsm8k+arithmetic` composes registered envs (each built from the same EnvConfig).
"""
from __future__ import annotations

from typing import Callable

from rltool.config import ConfigError, EnvConfig
from rltool.envs.base import Env, Example
from rltool.envs.compose import ComposedEnv
from rltool.registry import Registry

ENVS: Registry[Callable[[EnvConfig], Env]] = Registry("environment")


def register_env(name: str):
    """Class decorator: `@register_env("gsm8k")`; the class is built as `cls(cfg: EnvConfig)`."""
    return ENVS.register(name)


def validate_env_config(cfg: EnvConfig) -> None:
    """Raise ConfigError if env.name names an unregistered environment (cheap: builds nothing)."""
    for name in cfg.name.split("+"):
        if name not in ENVS:
            raise ConfigError(f"env.name={cfg.name!r}: unknown environment {name!r}; valid: {', '.join(ENVS.names())}")


def make_env(cfg: EnvConfig) -> Env:
    validate_env_config(cfg)
    parts = [ENVS[name](cfg) for name in cfg.name.split("+")]
    return parts[0] if len(parts) == 1 else ComposedEnv(parts, cfg.mix, cfg.eval_only)


# Imported last: these modules use register_env, defined above.
from rltool.envs import arithmetic, article_curriculum, collab, gsm8k, parallel  # noqa: E402,F401

__all__ = ["ENVS", "Env", "Example", "make_env", "register_env", "validate_env_config"]
