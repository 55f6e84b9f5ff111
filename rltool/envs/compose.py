"""`env_a + env_b`: one environment that serves both example sets.

Train examples are interleaved (a0, b0, a1, b1, ..., then the longer one's tail) so a prefix of
the stream mixes both tasks; eval examples are concatenated so per-env accuracy is easy to slice
by id prefix. `messages` routes each example to the env that made it, so each keeps its own
prompt. Example ids must be unique across the parts; the built-in envs prefix them with their name.
"""
from __future__ import annotations

from itertools import chain, zip_longest

from rltool.envs.base import Env, Example


class ComposedEnv:
    def __init__(self, a: Env, b: Env):
        self.parts = [a, b]
        self.name = f"{a.name}+{b.name}"
        self._owner: dict[str, Env] = {}
        for env in self.parts:
            for ex in chain(env.train_examples(), env.eval_examples()):
                if self._owner.setdefault(ex.id, env) is not env:
                    raise ValueError(f"example id {ex.id!r} appears in both {self._owner[ex.id].name} "
                                     f"and {env.name}; composed envs need unique ids")
        pairs = zip_longest(a.train_examples(), b.train_examples())
        self._train = [ex for pair in pairs for ex in pair if ex is not None]
        self._eval = a.eval_examples() + b.eval_examples()

    def train_examples(self) -> list[Example]:
        return self._train

    def eval_examples(self) -> list[Example]:
        return self._eval

    def messages(self, example: Example) -> list[dict]:
        return self._owner[example.id].messages(example)

    def __add__(self, other: Env) -> "ComposedEnv":
        return ComposedEnv(self, other)
