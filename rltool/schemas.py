"""Config schemas that components declare next to their code: an environment's `env.*` keys, a rollout's or
training loop's `algo.<its name>.*` keys.

An environment registers a dataclass that extends EnvConfig (`@register_env("dataset", config=DatasetConfig)`),
a rollout or loop one of its own (`@register_rollout("erl", config=ErlConfig)`). Hydra composes against
every registered schema at once (`all_env_keys`, `all_algo_keys`), so a key no environment has is a one-line
composition error with a did-you-mean; then `narrow_env` rebuilds `env` as the chosen environment's own
schema, so a key that belongs to another environment is one line too, and each `__post_init__` checks only
its own keys. An environment that plays another's problems (collab, parallel: `env.task`) holds its task's
keys as well, and `env=a+b` holds every part's.

Building these imports the component packages (torch included, ~1 s), so it runs once the command is known,
not when `rltool` is imported; plugins are imported first, so their components count.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from rltool.config import AlgoConfig, ConfigError, EnvConfig


def env_registries() -> list:
    """Where environments are registered: the language-model envs and the encoder agents' text envs."""
    from rltool.envs import ENVS
    from rltool.envs.text_gym import TEXT_ENVS

    return [ENVS, TEXT_ENVS]


def combine(classes: list[type], name: str) -> type:
    """One dataclass holding every field of `classes` (all EnvConfig subclasses); their `__post_init__`s run
    in turn (each calls super()). A field two of them declare with different defaults is a programming
    error: the same key would mean two things."""
    unique = list(dict.fromkeys(classes))
    leaves = [c for c in unique if not any(o is not c and issubclass(o, c) for o in unique)]
    if len(leaves) == 1:
        return leaves[0]
    seen: dict[str, tuple[type, Any]] = {}
    for cls in leaves:
        for f in dataclasses.fields(cls):
            default = default_of(f)
            if f.name in seen and seen[f.name][1] != default:
                raise TypeError(f"env key {f.name!r}: {seen[f.name][0].__name__} and {cls.__name__} declare different "
                                f"defaults ({seen[f.name][1]!r}, {default!r}); declare it once, in a shared base")
            seen.setdefault(f.name, (cls, default))
    return dataclasses.make_dataclass(name, [], bases=tuple(leaves))


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING if f.default is dataclasses.MISSING else f.default


def all_env_keys() -> type:
    """The composition-time schema of `env`: every registered environment's keys."""
    classes = [EnvConfig]
    for registry in env_registries():
        classes += [registry.config_of(n) for n in registry.names()]
    return combine(classes, "EnvConfig")


def env_schema(name: str, values: dict) -> Optional[type]:
    """The schema of env `name` (env=a+b: of its parts), None for a name no registry knows (the loop's checks
    say so, listing the valid names)."""
    from rltool.envs.task_based import OnTask

    classes = []
    for part in name.split("+"):
        registry = next((r for r in env_registries() if part in r), None)
        if registry is None:
            return None
        cls, entry = registry.config_of(part), registry[part]
        classes.append(cls)
        if isinstance(entry, type) and issubclass(entry, OnTask):  # its task's keys too (env.digits, ...)
            task = entry.TASK or values.get("task") or default_of(cls.__dataclass_fields__["task"])
            task_schema = env_schema(task, values) if task != part else None
            classes += [task_schema] if task_schema else []
    return combine(classes, "EnvConfig_" + "_".join(name.split("+")))


def narrow_env(node: DictConfig) -> DictConfig:
    """`env` as its environment's own schema. A key set to something other than its default that the chosen
    environment does not have is one line naming it and the environment's keys (a YAML or override meant for
    another environment would otherwise be ignored silently)."""
    values = OmegaConf.to_container(node, resolve=False)
    name = values.get("name")
    schema = env_schema(name, values) if isinstance(name, str) else None
    if schema is None:
        return node
    own = {f.name for f in dataclasses.fields(schema)}
    union = {f.name: default_of(f) for f in dataclasses.fields(all_env_keys())}
    for key, value in values.items():
        if key not in own and value != union.get(key):
            raise ConfigError(f"env.{key}={value!r}: not a key of environment {name}; its keys: {', '.join(sorted(own))}")
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in values.items() if k in own})


def algo_components() -> dict[str, type]:
    """`algo.<name>` -> schema, for every registered rollout and training loop that declares keys."""
    from rltool.algos.rollouts import ROLLOUTS
    from rltool.loops import LOOPS

    found: dict[str, type] = {}
    for registry in (ROLLOUTS, LOOPS):
        for name in registry.names():
            cls = registry.config_of(name)
            if cls is None:
                continue
            if name in found or name in AlgoConfig.__dataclass_fields__:
                raise TypeError(f"algo.{name}: two components (or a component and an algo key) use this name")
            found[name] = cls
    return found


def all_algo_keys() -> type:
    """AlgoConfig with one sub-config per component that declares keys: algo.erl.*, algo.ppo.*, a plugin's own."""
    fields = [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in sorted(algo_components().items())]
    return dataclasses.make_dataclass("AlgoConfig", fields, bases=(AlgoConfig,))


def env_config(**keys: Any) -> EnvConfig:
    """An environment's config built in code, as `env.*` overrides would build it: `env_config(name="arithmetic",
    digits=1)` is an ArithmeticConfig, checked by its `__post_init__`."""
    schema = env_schema(keys["name"], keys) if isinstance(keys.get("name"), str) else None
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema or EnvConfig), keys))


def algo_config(**keys: Any) -> AlgoConfig:
    """AlgoConfig with every registered component's sub-config (algo.erl, algo.ppo, ...), built in code."""
    return all_algo_keys()(**keys)
