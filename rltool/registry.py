"""Name -> function registries, filled by decorators and chosen by name from config.

Modelled on verl's `register_adv_est`: a failed lookup lists the valid names, so a typo in
YAML becomes one readable line instead of a KeyError traceback.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            return fn

        return add

    def __getitem__(self, name: str) -> F:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
