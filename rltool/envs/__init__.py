"""Environments: where prompts come from. One file per environment, registered by name; ENVS imports
every module of this package on its first lookup (rltool/registry.py), so there is no list to edit.

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

ENVS: Registry[Callable[[EnvConfig], Env]] = Registry("environment", home=("rltool.envs", "rltool.agrl"),
                                                config=EnvConfig)


def register_env(name: str, config: type[EnvConfig] | None = None):
    """Class decorator: `@register_env("gsm8k")`; the class is built as `cls(cfg)`, cfg an instance of `config`
    (a dataclass extending EnvConfig with the env's own keys, `env.<key>`; EnvConfig when it has none)."""
    return ENVS.register(name, config)


def validate_env_config(cfg: EnvConfig) -> None:
    """Raise ConfigError if env.name names an unregistered environment, or a part's own `check(cfg)` (an env
    that reads the user's data checks it here) refuses the config. Builds nothing, loads no model."""
    for name in cfg.name.split("+"):
        if name not in ENVS:
            raise ConfigError(f"env.name={cfg.name!r}: unknown environment {name!r}; valid: {', '.join(ENVS.names())}")
    for name in dict.fromkeys(cfg.name.split("+")):
        ENVS[name].check(cfg)


def make_env(cfg: EnvConfig) -> Env:
    validate_env_config(cfg)
    parts = [ENVS[name](cfg) for name in cfg.name.split("+")]
    return parts[0] if len(parts) == 1 else ComposedEnv(parts, cfg.mix, cfg.eval_only)


__all__ = ["ENVS", "Env", "Example", "make_env", "register_env", "validate_env_config"]
