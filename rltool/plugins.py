"""User code that extends rltool: `plugins=[my_task.py, my_pkg.my_module]` and installed packages.

A plugin is an ordinary Python file or module whose import registers components with the same
decorators rltool's own modules use (`register_env`, `reward`, `register_rollout`, `ADVANTAGES.register`,
...). Plugins are imported before the config is validated, so every name they register counts
wherever a name is checked. Installed packages register through the entry-point group
`rltool.plugins` (an entry point names a module, imported, or a function, called with no arguments).
Each plugin is imported once per process; each failure is one ConfigError line naming it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType
from typing import Iterable, Optional

from rltool.config import ConfigError

ENTRY_POINT_GROUP = "rltool.plugins"

_LOADED: set[str] = set()
"""Plugin keys (resolved file path, module name, entry point) already imported in this process."""
_SPECS: list[str] = []
"""The `plugins` entries this process imported, as absolute paths or module names (reward workers import them)."""


def loaded_plugins() -> tuple[str, ...]:
    return tuple(_SPECS)


def load_plugins(specs: Iterable[str], reward_module: Optional[str] = None) -> None:
    """Entry points of installed packages, then `specs` in order, then `reward.module` (the older
    hook for a reward file, now loaded with the plugins so it too may register an environment).
    A file named both in `plugins` and as `reward.module` is imported once, as `reward.module`."""
    load_entry_points()
    reward_file = os.path.realpath(reward_module) if reward_module else None
    for i, spec in enumerate(specs):
        if is_file_spec(spec) and os.path.realpath(spec) == reward_file:
            continue
        load_plugin(spec, f"plugins[{i}]")
    if reward_module is not None:
        from rltool.rewards.registry import load_reward_module

        load_reward_module(reward_module)


def is_file_spec(spec: str) -> bool:
    """`my_task.py`, `./tasks/x.py`, `/abs/x.py` are files; `my_pkg.my_module` is a module name."""
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def load_plugin(spec: str, key: str = "plugins") -> None:
    if is_file_spec(spec):
        import_file(spec, key)
    else:
        import_module(spec, key)


def import_file(path: str, key: str) -> None:
    resolved = os.path.realpath(path)
    if resolved in _LOADED:
        return
    exec_file(path, key, "rltool_plugin_", " (a plugin is a .py file or an importable module name)")
    _LOADED.add(resolved)
    _SPECS.append(resolved)


def exec_file(path: str, key: str, prefix: str, missing_hint: str = "") -> ModuleType:
    """Import the user's file `path` as a module named after it (`prefix` + its path); a failure is one
    ConfigError line naming `key`, the file's own line and the error, and leaves no module behind.
    Shared by `plugins` and `reward.module`."""
    resolved = os.path.realpath(path)
    if not os.path.isfile(resolved):
        raise ConfigError(f"{key}={path!r}: no such file{missing_hint}")
    name = prefix + "".join(c if c.isalnum() else "_" for c in resolved)
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: one line naming it, never a traceback
        del sys.modules[name]
        raise ConfigError(f"{key}={path!r}: {describe(e, resolved)}") from None
    return module


def import_module(name: str, key: str) -> None:
    if name in _LOADED:
        return
    if os.getcwd() not in sys.path:  # as `python -m`: a module next to where the command runs is found
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):  # the plugin itself, not one of its imports
            raise ConfigError(f"{key}={name!r}: no such module and no such file (a plugin is a .py file "
                              "or an importable module name)") from None
        raise ConfigError(f"{key}={name!r}: {describe(e)}") from None
    except Exception as e:
        raise ConfigError(f"{key}={name!r}: {describe(e)}") from None
    _LOADED.add(name)
    _SPECS.append(name)


def load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        tag = f"entry point {ep.name}={ep.value} ({ENTRY_POINT_GROUP})"
        if tag in _LOADED:
            continue
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as e:
            raise ConfigError(f"{tag}: {describe(e)}") from None
        _LOADED.add(tag)


def describe(e: Exception, path: Optional[str] = None) -> str:
    """`SyntaxError at line 3: ...` / `NameError at line 7 while importing: ...`: the plugin's own line."""
    if isinstance(e, ConfigError):  # a decorator refused what the plugin registered
        return str(e)
    if isinstance(e, SyntaxError):
        return f"SyntaxError at line {e.lineno}: {e.msg}"
    frames = traceback.extract_tb(e.__traceback__)
    lines = [f.lineno for f in frames if path is None or os.path.realpath(f.filename) == path]
    at = f" at line {lines[-1]}" if lines and path is not None else ""
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}{at} while importing: {first}"
