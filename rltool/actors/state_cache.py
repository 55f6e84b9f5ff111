"""A bounded cache of encoded texts, keyed by the text itself.

Text games repeat states constantly (FrozenLake 4x4 has 16), so a frozen encoder runs once per
distinct description and the rest are dictionary hits. Least recently used entries are evicted past
`max_size`; `hit_rate()` is logged as encoder/cache_hit_rate.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, TypeVar

V = TypeVar("V")


class StateCache(Generic[V]):
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._items: OrderedDict[str, V] = OrderedDict()
        self.hits = self.misses = 0

    def get_many(self, texts: list[str], compute: Callable[[list[str]], list[V]]) -> list[V]:
        """The values of `texts`, calling `compute` once on the distinct texts not cached (in first-seen order)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._items))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        fresh = dict(zip(missing, compute(missing))) if missing else {}
        out = []
        for t in texts:
            if t in fresh:
                out.append(fresh[t])
            else:
                self._items.move_to_end(t)
                out.append(self._items[t])
        for t, v in fresh.items():
            self._items[t] = v
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
        return out

    def hit_rate(self) -> float:
        """Hits over lookups since the last `reset_stats()` (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def reset_stats(self) -> None:
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)
