"""Name -> function registries, filled by decorators and chosen by name from config.

Modelled on verl's `register_adv_est`: a failed lookup lists the valid names, so a typo in
YAML becomes one readable line instead of a KeyError traceback.

A registry with a `home` package is complete whenever it is read: its first lookup imports every
module under that package once (`discover`), so rltool's own components register the way a
plugin does, by being imported, and no module keeps a list of the others to import.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Optional, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str, home: str | tuple[str, ...] = (), config: Optional[type] = None):
        self.kind = kind
        self.home = (home,) if isinstance(home, str) else home
        """The packages (e.g. "rltool.algos") whose modules register into this registry."""
        self.config = config
        """The config schema (a dataclass) of an entry registered without its own."""
        self._entries: dict[str, F] = {}
        self._configs: dict[str, Optional[type]] = {}

    def register(self, name: str, config: Optional[type] = None) -> Callable[[F], F]:
        """`config`: the entry's own config schema, a dataclass declared next to its code (rltool/schemas.py
        checks the entry's keys against it), so a component brings its keys with it."""
        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            self._configs[name] = config or self.config
            return fn

        return add

    def config_of(self, name: str) -> Optional[type]:
        """The config schema `name` was registered with (the registry's default when it declared none)."""
        self[name]  # a failed lookup lists the valid names
        return self._configs.get(name, self.config)

    def __getitem__(self, name: str) -> F:
        self._complete()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._complete()
        return name in self._entries

    def names(self) -> list[str]:
        self._complete()
        return sorted(self._entries)

    def _complete(self) -> None:
        for package in self.home:
            discover(package)


_DISCOVERED: set[str] = set()


def discover(package: str) -> None:
    """Import every module under `package` (subpackages included), once per process. Called at lookup
    time, never at import time, so modules may import each other's registries in any order."""
    if package in _DISCOVERED:
        return
    _DISCOVERED.add(package)  # first: a module that reads a registry while being imported does not recurse
    try:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            importlib.import_module(info.name)
    except BaseException:
        _DISCOVERED.discard(package)
        raise
